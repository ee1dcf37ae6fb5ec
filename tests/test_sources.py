"""Record sources: benchmark layouts (one class each), column maps, real photographs of mixed sizes, errors that
name the record or the option, and every shipped recipe's data sections against local files in each dataset's
schema."""

import json
import shlex
import subprocess
import sys

import pytest
import yaml
from jsonargparse import ArgumentParser
from PIL import Image

import benchmark_files as bf
from mbpo_lit.data import benchmarks
from mbpo_lit.data.benchmarks import AOKVQA, Amber, Pope, VQAv2
from mbpo_lit.data.captions import COCO_SYNONYMS, CocoChair, ObjectMentions
from mbpo_lit.data.sources import Records, RecordSource, SourceError, as_source, report_skipped
from mbpo_lit.fit import recipe
from mbpo_lit.mine import main as mine_main


def sizes(records):
    return {r["image"].size for r in records}


def test_pope_hub_layout_groups_by_category_and_spread_samples_every_category(tmp_path, photos):
    path = bf.pope_hub(tmp_path, photos)
    records, _ = Pope(str(path)).load()
    assert [r["group"] for r in records] == ["adversarial", "popular", "random", "random"]
    assert [r["answer"] for r in records] == ["yes", "no", "yes", "no"]
    first, _ = Pope(str(path), n=2).load()
    spread, _ = Pope(str(path), n=2, spread=True).load()
    assert [r["group"] for r in first] == ["adversarial", "popular"]
    assert [r["source_index"] for r in spread] == [0, 2]


def test_vqav2_answer_types_are_mapped_and_filtered_with_every_skip_listed(tmp_path, photos):
    path = str(bf.vqav2(tmp_path, photos))
    records, skipped = VQAv2(path).load()
    assert [r["answer_type"] for r in records] == ["yes_no", "number", "phrase", "yes_no"]
    closed, skipped = VQAv2(path, answer_types=["yes_no", "number"]).load()
    assert [r["id"] for r in closed] == ["100", "101", "103"]
    assert [(s["index"], s["id"]) for s in skipped] == [(2, "102")] and "answer_type 'phrase'" in skipped[0]["reason"]


# The reader of each layout of benchmark_files, as `bf.RECORDS_BEFORE` names them.
READERS = {
    "pope_github": lambda t, photos: Pope(str(bf.pope_github(t, photos, "popular")), image_root=str(t / "val2014")),
    "pope_hub": lambda t, photos: Pope(str(bf.pope_hub(t, photos))),
    "aokvqa": lambda t, photos: AOKVQA(str(bf.aokvqa(t, photos))),
    "vqav2": lambda t, photos: VQAv2(str(bf.vqav2(t, photos)), answer_types=["yes_no", "number"]),
    "amber": lambda t, photos: Amber(str(bf.amber(t, photos).parent / "query_all.json"), image_root=str(t / "image")),
}


@pytest.mark.parametrize("layout", sorted(READERS))
def test_each_benchmark_class_reads_its_published_layout_as_records_format_did(layout, tmp_path, photos):
    rows, photo_of, keys, skipped_before = bf.RECORDS_BEFORE[layout]
    records, skipped = READERS[layout](tmp_path, photos).load()
    assert [tuple(r.get(k) for k in bf.RECORD_FIELDS) for r in records] == rows
    assert [r["image"].size for r in records] == [photos[k].size for k in photo_of]
    assert [list(r) for r in records] == [keys] * len(rows) and skipped == skipped_before


@pytest.mark.parametrize("fmt, cls", [("pope", Pope), ("amber", Amber), ("aokvqa", AOKVQA), ("vqav2", VQAv2)])
def test_the_former_format_option_is_refused_naming_the_class_to_use(fmt, cls, tmp_path):
    path, name = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.png", "question": "q", "answer": "yes"}]), cls.__name__
    says = rf"^format='{fmt}' is now a class: use {name}\(\.\.\.\) / --data {name} "
    says += rf"\(class_path mbpo_lit.data.benchmarks.{name}\) instead of Records\(format=\.\.\.\)$"
    with pytest.raises(SourceError, match=says) as err:
        Records(path, format=fmt)
    assert "\n" not in str(err.value) and getattr(benchmarks, name) is cls and issubclass(cls, Records)
    with pytest.raises(SourceError, match="format='records' is gone"):
        Records(path, format="records")
    with pytest.raises(TypeError):  # the options after `path` are keyword-only: Records(path, split, name, format)
        Records(path, "train", None, fmt)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['formt'\]"):
        Records(path, formt=fmt)


def test_the_former_format_option_is_refused_on_the_command_line(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.png", "question": "q", "answer": "yes"}])
    with pytest.raises(SystemExit) as exit_:
        mine_main(["--model", "m", "--source", "Records", "--source.path", path, "--source.format", "vqav2"])
    assert exit_.value.code not in (0, None) and "Option 'format' is not accepted" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    "command, option, class_path, init",
    [
        ("mine", "--source", "mbpo_lit.data.benchmarks.VQAv2", "path"),
        ("evaluate", "--data", "mbpo_lit.data.benchmarks.Pope", "path"),
        ("evaluate", "--data", "mbpo_lit.data.captions.CocoChair", "annotations"),
    ],
)
def test_the_commands_resolve_the_source_classes_by_name(command, option, class_path, init, tmp_path):
    """`--source VQAv2` / `--data Pope` / `--data CocoChair` in a fresh interpreter: the command itself makes the
    classes known to jsonargparse (here the test module has imported them already)."""
    argv = ["--model", "m", option, class_path.split(".")[-1], f"{option}.{init}", "x.json", "--print_config"]
    done = subprocess.run(
        [sys.executable, "-m", "mbpo_lit", command, *argv], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert yaml.safe_load(done.stdout)[option[2:]]["class_path"] == class_path


def test_renamed_columns_real_style_answers_and_relative_images(tmp_path, photos):
    for i, p in enumerate(photos):
        p.save(tmp_path / f"{i}.png")
    rows = [
        {"img": f"{i}.png", "prompt": "Is there a cat?", "gt": "Yes, there is a cat." if i == 2 else "No."}
        for i in range(len(photos))
    ]
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = Records(
        str(tmp_path / "vqa.jsonl"),
        columns={"image": "img", "question": "prompt", "answer": "gt"},
        answer_type="yes_no",
    )
    records, skipped = src.load()
    assert not skipped and [r["answer"] for r in records] == ["no", "no", "yes", "no"]
    assert sizes(records) == {p.size for p in photos}


def test_a_mistyped_column_names_the_columns_the_source_has(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "x.png", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(
        SourceError,
        match=r"columns \{'question': 'prompt'\} not in the data; its columns are "
        r"\['image', 'question', 'answer'\]",
    ):
        Records(str(tmp_path / "d.jsonl"), columns={"question": "prompt"}).load()
    (tmp_path / "p.jsonl").write_text(json.dumps({"image": "x.png", "text": "Is there a cat?", "y": "no"}) + "\n")
    with pytest.raises(SourceError, match=r"no column for \['answer'\] \(layout of Pope\)"):
        Pope(str(tmp_path / "p.jsonl")).load()


def test_a_missing_path_and_an_unreachable_hub_id_say_which_they_were(tmp_path):
    with pytest.raises(SourceError, match="data path .*nope.jsonl' does not exist"):
        Records(str(tmp_path / "nope.jsonl")).load()
    with pytest.raises(
        SourceError,
        match="dataset 'someone/no-such-dataset' is not a local path and could not be "
        r"loaded from the hub \(HF_HUB_OFFLINE is set\)",
    ):
        Records("someone/no-such-dataset").load()


def test_bad_records_are_each_named_and_none_is_dropped_silently(tmp_path, photos):
    photos[0].save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [
        {"image": "ok.png", "question": "Is it red?", "answer": "yes"},
        {"image": "ok.png", "question": "  ", "answer": "yes"},
        {"image": "ok.png", "question": "Is it red?", "answer": ""},
        {"image": "broken.png", "question": "Is it red?", "answer": "no"},
        {"image": "missing.png", "question": "Is it red?", "answer": "no"},
        {"image": "ok.png", "question": "Is it red?", "answer": "maybe"},
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = Records(str(tmp_path / "d.jsonl"), answer_type="yes_no")
    records, skipped = src.load()
    assert len(records) + len(skipped) == len(rows) and len(records) == 1
    reasons = {s["index"]: s["reason"] for s in skipped}
    assert reasons[1] == "empty question" and reasons[2] == "missing answer"
    assert reasons[3].startswith("unreadable image") and reasons[4].startswith("unreadable image")
    assert reasons[5] == "answer 'maybe' is not a yes_no answer"
    with pytest.raises(SourceError, match=r"5 unusable records(.|\n)*record 4 \(id 4\): unreadable image"):
        report_skipped(skipped, src, "error")


def test_a_plain_string_is_a_source_in_the_library_schema(tmp_path, photos):
    photos[1].save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("image,question,answer,answer_type\na.png,How many cups?,one,number\n")
    records, _ = as_source(str(tmp_path / "d.csv")).load()
    assert records[0]["answer"] == "one" and records[0]["image"].size == photos[1].size


def data_sections(name: str) -> dict:
    return yaml.safe_load(open(recipe(name)))["data"]


# Every hub id a recipe names, with its local copy in that dataset's schema: each is plain parquet on the hub, which
# `datasets` 4 and later load (HuggingFaceM4/VQAv2, a loading script, they refuse).
LOCAL_COPIES = {"HuggingFaceM4/A-OKVQA": bf.aokvqa, "lmms-lab/POPE": bf.pope_hub, "lmms-lab/VQAv2": bf.vqav2}
# The class each shipped recipe's data sections name (and the mining commands in their headers).
RECIPE_CLASSES = {"online": AOKVQA, "val": Pope, "mine": VQAv2}


def instantiate(section: dict, **init_args) -> RecordSource:
    """A config's source section ({class_path, init_args}) built as the commands build it (jsonargparse resolves
    the class_path), with some init_args replaced."""
    p = ArgumentParser()
    p.add_argument("--source", type=RecordSource)
    args = p.parse_object({"source": {**section, "init_args": {**section["init_args"], **init_args}}})
    return p.instantiate_classes(args).source


@pytest.mark.parametrize(
    "name", ["qwen2_5_vl_7b_qlora", "qwen2_vl_7b_qlora", "llava_1_5_7b_qlora", "qwen2_5_vl_7b_ddp"]
)
def test_each_real_recipe_is_hybrid_and_its_sources_load_a_local_copy_in_the_dataset_schema(name, tmp_path, photos):
    data = data_sections(name)
    assert data["pairs"] and data["online"] and data["val"], "the 7B recipes train on both streams and validate"
    for key in ("online", "val"):
        section = data[key]
        cls = RECIPE_CLASSES[key]
        assert section["class_path"] == f"mbpo_lit.data.benchmarks.{cls.__name__}"
        local = LOCAL_COPIES[section["init_args"]["path"]](tmp_path / key, photos)
        source = instantiate(section, path=str(local))
        assert type(source) is cls and source.n == section["init_args"]["n"] and source.spread
        records, skipped = source.load()
        assert records and not skipped, (key, skipped)
        assert len(sizes(records)) >= 3 and all(r["answer_type"] in ("choice", "yes_no") for r in records)
        assert {r["family"] for r in records} == {"choice" if cls is AOKVQA else "existence"}


def mining_command(name: str) -> list[str]:
    """The `python -m mbpo_lit mine ...` command a recipe's comment shows, as arguments."""
    lines = [line.lstrip("#").strip() for line in open(recipe(name)) if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("python -m mbpo_lit mine"))
    command = []
    for line in lines[start:]:
        command.append(line.rstrip("\\").strip())
        if not line.endswith("\\"):
            break
    return shlex.split(" ".join(command))[4:]


@pytest.mark.parametrize("name", ["qwen2_5_vl_7b_qlora", "qwen2_vl_7b_qlora", "llava_1_5_7b_qlora"])
def test_the_mining_command_in_each_real_recipe_parses_and_its_source_reads_the_dataset(name, tmp_path, photos, capsys):
    args = mining_command(name)
    with pytest.raises(SystemExit) as exit_:
        mine_main([*args, "--print_config"])
    assert exit_.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["out"] == data_sections(name)["pairs"].removesuffix("/dataset")
    assert config["source"]["class_path"] == "mbpo_lit.data.benchmarks.VQAv2"
    local = LOCAL_COPIES[config["source"]["init_args"]["path"]](tmp_path, photos)
    source = instantiate(config["source"], path=str(local))
    assert type(source) is RECIPE_CLASSES["mine"] and source.answer_types == ["yes_no", "number"]
    assert not source.spread and source.n is None  # `mine --n` sets it: the first n rows are streamed, no more
    records, skipped = source.load()
    assert len(records) == 3 and [s["id"] for s in skipped] == ["102"]  # the "other" question is listed
    assert [r["answer_type"] for r in records] == ["yes_no", "number", "yes_no"]


def test_images_of_every_mode_become_rgb(tmp_path):
    Image.new("L", (30, 20)).save(tmp_path / "g.png")
    Image.new("RGBA", (20, 30)).save(tmp_path / "a.png")
    rows = [{"image": "g.png", "question": "q", "answer": "a"}, {"image": "a.png", "question": "q", "answer": "a"}]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records, _ = Records(str(tmp_path / "d.jsonl")).load()
    assert [r["image"].mode for r in records] == ["RGB", "RGB"] and sizes(records) == {(30, 20), (20, 30)}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_answers_must_read_as_their_type_and_descriptions_need_a_mention_parser(tmp_path, photos):
    photos[0].save(tmp_path / "a.png")
    rows = [
        {"image": "a.png", "question": "How many?", "answer": "many", "answer_type": "number"},
        {"image": "a.png", "question": "How many?", "answer": "three", "answer_type": "number"},
        {"image": "a.png", "question": "Which?", "answer": "E", "answer_type": "choice"},
        {"image": "a.png", "question": "Which?", "answer": "(b)", "answer_type": "choice"},
        {"image": "a.png", "question": "Describe it.", "answer": "a cat", "answer_type": "description"},
    ]
    records, skipped = Records(write_jsonl(tmp_path / "d.jsonl", rows)).load()
    assert [r["source_index"] for r in records] == [1, 3]
    reasons = {s["index"]: s["reason"] for s in skipped}
    assert reasons[0] == "answer 'many' is not a number answer" and reasons[2] == "answer 'E' is not a choice answer"
    assert reasons[4].startswith("answer_type 'description' is not close-ended")


def test_a_misspelt_field_in_columns_is_refused_by_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"image": "x.png", "prompt": "q", "answer": "a"}])
    with pytest.raises(SourceError, match=r"columns names unknown record fields \['questoin'\]"):
        Records(path, columns={"questoin": "prompt"}).load()


def test_a_saved_dataset_dict_is_read_at_its_split(tmp_path, photos):
    from datasets import Dataset, DatasetDict

    rows = [{"image": photos[0], "question": "Is there a person?", "answer": "yes", "answer_type": "yes_no"}]
    DatasetDict({"test": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    records, _ = Records(str(tmp_path / "dd"), split="test").load()
    assert records[0]["answer"] == "yes" and records[0]["image"].size == photos[0].size
    with pytest.raises(SourceError, match=r"no split 'train'; its splits are \['test'\]"):
        Records(str(tmp_path / "dd")).load()


def test_aokvqa_records_with_a_bad_choice_index_are_named(tmp_path, photos):
    from datasets import load_from_disk

    path = bf.aokvqa(tmp_path, photos)
    data = load_from_disk(str(path)).map(
        lambda r, i: {"correct_choice_idx": 7 if i == 1 else r["correct_choice_idx"]}, with_indices=True
    )
    data.save_to_disk(str(tmp_path / "bad"))
    records, skipped = AOKVQA(str(tmp_path / "bad")).load()
    assert len(records) == 3 and [(s["index"], s["id"]) for s in skipped] == [(1, "q1")]
    assert "correct index 7" in skipped[0]["reason"]


def test_records_left_out_by_answer_types_are_counted_not_refused(tmp_path, photos, capsys):
    src = VQAv2(str(bf.vqav2(tmp_path, photos)), answer_types=["yes_no", "number"])
    records, skipped = src.load()
    report_skipped(skipped, src, "error")  # filtered on purpose: no error
    assert len(records) == 3 and "1 records left out by answer_types" in capsys.readouterr().out


def test_amber_queries_are_joined_with_annotations_by_id_and_grouped_by_amber_type(tmp_path, photos):
    path = bf.amber(tmp_path, photos)
    records, skipped = Amber(str(path), image_root=str(tmp_path / "image")).load()
    assert not skipped and [r["id"] for r in records] == [str(1005 + j) for j in range(len(bf.AMBER_QUERIES))]
    assert [r["answer"] for r in records] == [q[3] for q in bf.AMBER_QUERIES]
    assert [r["group"] for r in records] == ["existence"] * 2 + ["attribute"] * 3 + ["relation"] * 2 + ["existence"]
    assert [r["amber_type"] for r in records] == [r["group"] for r in records]
    assert [r["family"] for r in records][2:5] == ["attribute-state", "attribute-number", "attribute-action"]
    assert {r["answer_type"] for r in records} == {"yes_no"} and records[1]["question"] == bf.AMBER_QUERIES[1][2]
    assert len(sizes(records)) == 3


def test_amber_generative_queries_are_counted_and_bad_ids_named(tmp_path, photos, capsys):
    path = bf.amber(tmp_path, photos)
    src = Amber(str(path.parent / "query_all.json"), image_root=str(tmp_path / "image"))
    records, skipped = src.load()
    assert len(records) == len(bf.AMBER_QUERIES) and [s["id"] for s in skipped] == ["1", "2", "3", "4"]
    report_skipped(skipped, src, "error")  # the generative task left out on purpose: no error
    assert "4 records left out" in capsys.readouterr().out
    queries = json.loads(path.read_text()) + [{"id": 99999, "image": "AMBER_1.jpg", "query": "Is it?"}]
    annotations = json.loads((tmp_path / "data" / "annotations.json").read_text())
    annotations[-1]["type"] = "discriminative-colour"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ann.json").write_text(json.dumps(annotations))
    odd = write_jsonl(tmp_path / "odd.jsonl", queries)
    src = Amber(odd, image_root=str(tmp_path / "image"), annotations=str(tmp_path / "elsewhere/ann.json"))
    records, skipped = src.load()
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert len(records) == len(bf.AMBER_QUERIES) - 1 and reasons["99999"].startswith("id 99999 is not in ")
    assert reasons["1012"].startswith("AMBER type 'discriminative-colour' is none of")


def test_amber_without_its_annotations_file_says_which_option_to_pass(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"id": 1005, "image": "AMBER_1.jpg", "query": "Is there a dog?"}])
    with pytest.raises(SourceError, match=r"Amber needs AMBER's data/annotations.json.*annotations=PATH"):
        Amber(path).load()
    with pytest.raises(SourceError, match="annotations='a.json' is an option of Amber, not Pope"):
        Pope(path, annotations="a.json")


def test_pope_subsets_read_in_one_go_from_a_glob(tmp_path, photos):
    for category in ("random", "popular", "adversarial"):
        bf.pope_github(tmp_path, photos[:2], category)
    src = Pope(str(tmp_path / "coco_pope_*.json"), image_root=str(tmp_path / "val2014"))
    records, skipped = src.load()
    assert not skipped and len(records) == 12
    assert [r["group"] for r in records[::4]] == ["adversarial", "popular", "random"]  # sorted file names
    assert records[0]["id"] == "coco_pope_adversarial/1" and len({r["id"] for r in records}) == 12
    spread, _ = Pope(src.path, image_root=src.image_root, n=3, spread=True).load()
    assert [r["group"] for r in spread] == ["adversarial", "popular", "random"]
    with pytest.raises(SourceError, match="matches no file"):
        Pope(str(tmp_path / "nothing_*.json")).load()


def test_a_generic_vqa_jsonl_takes_its_answer_type_from_the_option(tmp_path, photos):
    path = str(bf.vqa_jsonl(tmp_path, photos))
    records, skipped = Records(path, answer_type="phrase").load()
    assert not skipped and [r["answer"] for r in records] == ["spacesuit", "coffee", "cat", "rocket"]
    assert {r["answer_type"] for r in records} == {"phrase"} and sizes(records) == {p.size for p in photos}
    assert [r["question"] for r in records][2] == "What animal is this?" and records[3]["id"] == "3"


def test_multiple_choice_records_carry_their_options_for_the_verifier(tmp_path, photos):
    records, _ = AOKVQA(str(bf.aokvqa(tmp_path, photos))).load()
    assert records[1]["choices"] == ["a person", "a cup of coffee", "a cat", "a rocket"]
    photos[0].save(tmp_path / "a.png")
    row = {"image": "a.png", "question": "Which? A. red B. blue", "answer": "B", "answer_type": "choice"}
    records, _ = Records(write_jsonl(tmp_path / "c.jsonl", [row | {"choices": ["red", "blue"]}])).load()
    assert records[0]["choices"] == ["red", "blue"]
    records, skipped = Records(write_jsonl(tmp_path / "s.jsonl", [row | {"choices": "red, blue"}])).load()
    assert skipped[0]["reason"] == "choices must be a list of the options' texts, got str"
    records, _ = Records(write_jsonl(tmp_path / "n.jsonl", [row])).load()
    assert "choices" not in records[0]


def test_coco_instances_give_description_records_with_the_objects_present(tmp_path, photos):
    path = bf.coco_instances(tmp_path, photos)
    src = CocoChair(str(path), image_root=str(tmp_path / "val2014"))
    records, skipped = src.load()
    assert not skipped and [r["id"] for r in records] == ["100", "101", "102", "103"]
    assert [r["objects"] for r in records] == [["person"], ["cup", "dining table"], ["cat"], []]
    assert {r["answer_type"] for r in records} == {"description"} and len(sizes(records)) == 3
    assert records[0]["question"] == "Please describe this image in detail."
    first, _ = CocoChair(str(path), image_root=str(tmp_path / "val2014"), n=2, spread=True).load()
    assert [r["id"] for r in first] == ["100", "102"]


def test_coco_mentions_find_category_names_plurals_and_synonyms_longest_first():
    mentions = ObjectMentions(
        ["person", "dog", "hot dog", "teddy bear", "dining table", "cup"], {**COCO_SYNONYMS, "cup": ["mug"]}
    )
    assert mentions("A man and two women eat hot dogs at a dining table with a dog.") == [
        "person",
        "person",
        "hot dog",
        "dining table",
        "dog",
    ]
    assert mentions("Two teddy bears on a table; mugs, cups and people.") == [
        "teddy bear",
        "dining table",
        "cup",
        "cup",
        "person",
    ]
    assert mentions("A bear and a hotdog.") == []  # not COCO names here
    assert mentions("A cat on a couch.") == []  # synonyms of categories the file lacks are not found


def test_coco_bad_images_are_named_and_a_bad_file_is_refused(tmp_path, photos):
    path = bf.coco_instances(tmp_path, photos)
    data = json.loads(path.read_text())
    data["images"][1]["file_name"] = "gone.jpg"
    data["annotations"].append({"id": 99, "image_id": 102, "category_id": 999})
    path.write_text(json.dumps(data))
    records, skipped = CocoChair(str(path), image_root=str(tmp_path / "val2014")).load()
    assert [r["id"] for r in records] == ["100", "103"]
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert (
        reasons["101"].startswith("unreadable image")
        and reasons["102"] == "annotations name unknown category ids [999]"
    )
    (tmp_path / "x.json").write_text(json.dumps({"images": []}))
    with pytest.raises(SourceError, match="not a COCO instances file"):
        CocoChair(str(tmp_path / "x.json")).load()
    with pytest.raises(SourceError, match="does not exist"):
        CocoChair(str(tmp_path / "nope.json")).load()
