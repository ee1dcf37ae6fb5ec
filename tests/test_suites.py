"""The paper's suites: MMStar, MMBench (dev), AI2D and MME read from parquet copies of their hub layouts with real
photographs, their official scores against hand-computed values, group-preserving paired intervals, and the whole
`evaluate` command on a tiny checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Features, Image, Value

import benchmark_files as bf
from mbpo_lit.core.answers import LETTERS, parse_yes_no, parse_yes_no_mme
from mbpo_lit.data.sources import SourceError, report_skipped
from mbpo_lit.data.suites import AI2D, LETTER_PROMPT, MME, MMBench, MMStar
from mbpo_lit.evaluate import main
from mbpo_lit.evaluation import evaluate_source, paired_change, score, summarize
from mbpo_lit.evaluation.official import resample_units
from mbpo_lit.evaluation.scoring import judge
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, load_policy, save_adapter

READERS = {
    "mmstar": (MMStar, bf.mmstar),
    "mmbench": (MMBench, bf.mmbench),
    "ai2d": (AI2D, bf.ai2d),
    "mme": (MME, bf.mme),
}


def load(name, tmp_path, photos, **options):
    cls, write = READERS[name]
    return cls(str(write(tmp_path / name, photos)), **options).load()


def test_mmstar_reads_its_inline_options_category_and_axis(tmp_path, photos):
    records, skipped = load("mmstar", tmp_path, photos)
    assert not skipped and [r["answer"] for r in records] == [a for _, _, a, _, _ in bf.MMSTAR_ROWS]
    first = records[0]
    assert first["question"] == bf.MMSTAR_ROWS[0][1] + "\n" + LETTER_PROMPT and first["answer_type"] == "choice"
    assert first["choices"] == ["a spacesuit", "a swimsuit", "a kimono", "a tuxedo"]
    assert [(r["category"], r["l2_category"]) for r in records] == [row[3:] for row in bf.MMSTAR_ROWS]
    assert {r["benchmark"] for r in records} == {"mmstar"} and len({r["image"].size for r in records}) > 1


def test_mmbench_rotations_keep_the_right_option_and_carry_index_rotation_and_hint(tmp_path, photos):
    records, skipped = load("mmbench", tmp_path, photos)
    assert not skipped and len(records) == sum(len(q[3]) for q in bf.MMBENCH_QUESTIONS)
    by_question = {}
    for r in records:
        by_question.setdefault(r["mmbench_index"], []).append(r)
        assert r["id"] == str(r["mmbench_index"] + 1_000_000 * r["rotation"])
        assert r["question"].endswith(
            "\n" + "\n".join(f"{LETTERS[j]}. {c}" for j, c in enumerate(r["choices"])) + "\n" + LETTER_PROMPT
        )
    for i, (_, hint, question, options, right, category, l2) in enumerate(bf.MMBENCH_QUESTIONS):
        rows = by_question[i]
        assert sorted(r["rotation"] for r in rows) == list(range(len(options)))
        # Every rotation shifts the options and the letter with them: the right option's text stays the same.
        assert {r["choices"][LETTERS.index(r["answer"])] for r in rows} == {options[right]}
        assert {(r["category"], r["l2_category"]) for r in rows} == {(category, l2)}
        start = f"{hint}\n{question}\n" if hint not in (None, "nan") else f"{question}\n"
        assert all(r["question"].startswith(start) for r in rows)
    assert not by_question[2][0]["question"].startswith("nan")


def test_ai2d_and_mme_read_their_hub_layouts(tmp_path, photos):
    records, skipped = load("ai2d", tmp_path, photos)
    assert not skipped and [r["answer"] for r in records] == ["A", "B", "C", "D"]
    assert records[0]["choices"] == ["a person", "a planet", "a leaf"] and "\nC. a leaf\n" in records[0]["question"]
    records, skipped = load("mme", tmp_path, photos)
    assert not skipped and [r["answer"] for r in records] == [a.lower() for *_, a in bf.MME_ROWS]
    assert [r["category"] for r in records] == [t for _, t, _, _ in bf.MME_ROWS]
    assert [r["mme_image"] for r in records][:4] == ["existence/0000.jpg"] * 2 + ["existence/0002.jpg"] * 2
    assert len({r["id"] for r in records}) == len(records)
    assert records[0]["question"].endswith("? Please answer yes or no.") and records[0]["answer_type"] == "yes_no"


def test_records_a_suite_cannot_use_are_each_named_and_options_of_records_work(tmp_path, photos):
    rows = [  # MMBench rows: fine, a gap in the options, an answer past them, an index that is no integer
        {"index": "5", "A": "x", "B": "y", "C": None, "answer": "B"},
        {"index": "6", "A": "x", "B": None, "C": "z", "answer": "A"},
        {"index": "7", "A": "x", "B": "y", "C": None, "answer": "C"},
        {"index": "q8", "A": "x", "B": "y", "C": None, "answer": "A"},
    ]
    rows = [
        r | {"question": "Which?", "hint": None, "image": photos[0], "category": "c", "L2-category": "l"} for r in rows
    ]
    features = Features({k: Value("string") for k in rows[0]} | {"image": Image()})
    path = bf.write_parquet(tmp_path / "mmb.parquet", rows, features)
    source = MMBench(str(path))
    records, skipped = source.load()
    assert [r["id"] for r in records] == ["5"]
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert reasons["6"] == "options ['A', 'C']: not A, B, ..." and "not one of the options' letters AB" in reasons["7"]
    assert "is not an integer" in reasons["q8"]
    with pytest.raises(SourceError, match=r"3 unusable records"):
        report_skipped(skipped, source, "error")
    mme_rows = [
        {"question_id": "x/1.jpg", "image": photos[1], "question": "Is it?", "answer": "Yes", "category": "smell"}
    ]
    path = bf.write_parquet(
        tmp_path / "mme.parquet", mme_rows, Features({k: Value("string") for k in mme_rows[0]} | {"image": Image()})
    )
    assert "MME sub-task 'smell' is none of" in MME(str(path)).load()[1][0]["reason"]
    bad_ai2d = [{"question": "Which?", "options": ["x", "y"], "answer": "2", "image": photos[2]}]
    features = Features(
        {"question": Value("string"), "options": [Value("string")], "answer": Value("string"), "image": Image()}
    )
    assert (
        "needs 2-4 options and an option's index"
        in AI2D(str(bf.write_parquet(tmp_path / "a.parquet", bad_ai2d, features))).load()[1][0]["reason"]
    )
    first, _ = load("mme", tmp_path / "n", photos, n=3)
    spread, _ = MME(str(tmp_path / "n" / "mme" / "data" / "test-*.parquet"), n=2, spread=True).load()
    assert [r["source_index"] for r in first] == [0, 1, 2] and [r["source_index"] for r in spread] == [0, 4]


def test_mme_reads_yes_no_by_its_own_first_four_characters_rule():
    cases = {
        "Yes": "yes",
        " no.": "no",
        "Yes, there is no dog in the image.": "yes",  # POPE's rule: "no" in the first sentence makes it no
        "No, there is a dog.": "no",
        "Not at all.": "no",
        "There is no dog.": None,  # neither in the first four characters: wrong whatever the label
        "I think so, yes.": None,
    }
    assert {text: parse_yes_no_mme(text) for text in cases} == cases
    assert parse_yes_no("Yes, there is no dog in the image.") == "no" and parse_yes_no("There is no dog.") == "no"


def test_mmstar_accuracy_per_category_against_hand_computed_values(tmp_path, photos):
    records, _ = load("mmstar", tmp_path, photos)
    # right, right (the option's text), wrong letter, right, unparseable
    preds = ["A", "The answer is coffee.", "(B)", "D. a rocket", "I cannot tell."]
    result = score(records, preds)
    assert result["mmstar"]["accuracy"] == pytest.approx(3 / 5) and result["mmstar"]["n"] == 5
    assert {c: v["accuracy"] for c, v in result["mmstar"]["by_category"].items()} == {
        "coarse perception": 0.5,
        "fine-grained perception": 0.5,
        "math": 1.0,
    }
    assert result["mmstar"]["by_l2_category"]["image scene and topic"] == {"accuracy": 0.5, "n": 2}
    flat = summarize(result)
    assert flat["mmstar_accuracy"] == pytest.approx(0.6) and flat["mmstar_fine_grained_perception_accuracy"] == 0.5
    assert flat["mmstar_coarse_perception_accuracy"] == 0.5 and flat["mmstar_math_accuracy"] == 1.0


def right_letters(records, wrong=()):
    """Each record's right letter, except those at `wrong` positions (another letter)."""
    return [
        LETTERS[(LETTERS.index(r["answer"]) + 1) % len(r["choices"])] if k in wrong else r["answer"]
        for k, r in enumerate(records)
    ]


def test_mmbench_circular_accuracy_needs_every_rotation_right(tmp_path, photos):
    records, _ = load("mmbench", tmp_path, photos)
    last = next(k for k, r in enumerate(records) if (r["mmbench_index"], r["rotation"]) == (0, 3))
    preds = right_letters(records, wrong={last})  # question 0 right in 3 of its 4 rotations; 1 and 2 always right
    preds[2] = "It is coffee."  # question 2, rotation 0: the option's text
    result = score(records, preds)["mmbench"]
    # 8 of 9 rows right; 2 of 3 questions right in every rotation (counted per rotation it would be 8/9).
    assert (result["accuracy"], result["circular_accuracy"]) == (pytest.approx(8 / 9), pytest.approx(2 / 3))
    assert (result["n"], result["questions"]) == (9, 3)
    fine = result["by_l2_category"]["finegrained_perception (instance-level)"]
    assert (fine["accuracy"], fine["circular_accuracy"], fine["questions"]) == (pytest.approx(5 / 6), 0.5, 2)
    assert result["by_category"]["attribute"]["circular_accuracy"] == 0.0
    flat = summarize(score(records, preds))
    assert flat["mmbench_circular_accuracy"] == pytest.approx(2 / 3) and flat["mmbench_accuracy"] == pytest.approx(
        8 / 9
    )
    assert flat["mmbench_circular_coarse_perception_accuracy"] == 1.0
    assert flat["mmbench_circular_finegrained_perception_instance_level_accuracy"] == 0.5


def test_ai2d_accuracy_against_hand_computed_values(tmp_path, photos):
    records, _ = load("ai2d", tmp_path, photos)
    result = score(records, ["A", "C", "The animal is a cat.", "nose cone"])
    assert result["ai2d"] == {"accuracy": 0.5, "n": 4} and summarize(result)["ai2d_accuracy"] == 0.5


MME_PREDICTIONS = [
    "Yes, there is a person.",  # existence, image 0: right
    "No.",  # right: image 0 has both right
    "Yes",  # existence, image 2: right
    "Yes, there is no giraffe.",  # MME's rule reads yes: wrong (POPE's would read no)
    "There is one cup.",  # count: neither yes nor no in its first four characters: wrong
    "No",  # right
    "yes",  # code_reasoning: both right
    "no",
]


def test_mme_scores_acc_plus_per_image_and_sums_perception_and_cognition(tmp_path, photos):
    records, _ = load("mme", tmp_path, photos)
    result = score(records, MME_PREDICTIONS)
    tasks = result["mme"]["by_subtask"]
    # existence: acc 3/4, acc+ 1/2 (one of two images both right): 75 + 50; count: acc 1/2, acc+ 0; code: 200.
    assert (tasks["existence"]["acc"], tasks["existence"]["acc_plus"], tasks["existence"]["score"]) == (
        0.75,
        0.5,
        125.0,
    )
    assert (tasks["count"]["score"], tasks["code_reasoning"]["score"]) == (50.0, 200.0)
    assert (tasks["existence"]["images"], tasks["existence"]["incomplete_images"]) == (2, 0)
    assert (result["mme"]["perception"], result["mme"]["cognition"]) == (175.0, 200.0)
    assert result["all"]["accuracy"] == 0.75 and result["all"]["unparseable"] == 1 and "pope" not in result
    flat = summarize(result)
    assert (flat["mme_perception"], flat["mme_cognition"], flat["mme_existence"]) == (175.0, 200.0, 125.0)


def test_a_pair_drawn_twice_counts_as_two_images(tmp_path, photos):
    records, _ = load("mme", tmp_path, photos)
    pick = [records[0], records[1], records[0], records[1], records[2], records[3]]
    preds = ["yes", "no", "yes", "no", "yes", "yes"]
    # Three images (image 0 twice): acc 5/6, acc+ 2/3. Merged, image 0 would be one image of four questions.
    drawn = score(pick, preds, draws=[0, 0, 1, 1, 2, 2])["mme"]["by_subtask"]["existence"]
    assert (drawn["images"], drawn["score"]) == (3, pytest.approx(100 * 5 / 6 + 100 * 2 / 3))
    merged = score(pick, preds)["mme"]["by_subtask"]["existence"]
    assert (merged["images"], merged["incomplete_images"], merged["acc_plus"]) == (2, 1, 0.5)


def many(records, copies):
    """`copies` copies of the records, each copy's groups (MME images, MMBench questions) distinct."""
    out = []
    for c in range(copies):
        for r in records:
            extra = {"mme_image": f"{r['mme_image']}/{c}"} if "mme_image" in r else {}
            extra |= {"mmbench_index": r["mmbench_index"] + 10 * c} if "mmbench_index" in r else {}
            out.append(r | extra | {"id": f"{r['id']}/{c}"})
    return out


def test_paired_intervals_resample_mme_pairs_and_mmbench_questions_whole(tmp_path, photos):
    mme_records = many([r for r in load("mme", tmp_path, photos)[0] if r["category"] != "count"], 15)
    # Before: each image's first question right, its second wrong (acc 1/2, acc+ 0: 50); after: both right (200).
    # Every resample of whole pairs moves each sub-task by exactly 150; a resample of rows would not (an image
    # drawn with only its right question would count for acc+).
    before = ["yes"] * len(mme_records)
    after = [r["answer"] for r in mme_records]
    change = paired_change(mme_records, before, after, n_boot=100)
    for key in ("mme_existence", "mme_code_reasoning", "mme_perception", "mme_cognition"):
        assert (change[key]["change"], change[key]["ci95_low"], change[key]["ci95_high"]) == (150.0, 150.0, 150.0), key
    bench = many(load("mmbench", tmp_path / "b", photos)[0], 10)
    # Before: rotation 0 right, the others wrong; after: all right. Circular accuracy moves from 0 to 1 in every
    # resample of whole questions.
    before = right_letters(bench, wrong={k for k, r in enumerate(bench) if r["rotation"] > 0})
    change = paired_change(bench, before, right_letters(bench), n_boot=100)
    circ = change["mmbench_circular_accuracy"]
    assert (circ["before"], circ["after"], circ["ci95_low"], circ["ci95_high"]) == (0.0, 1.0, 1.0, 1.0)
    assert change["mmbench_accuracy"]["change"] == pytest.approx(1 - 30 / 90)


def test_resampling_units_group_only_what_a_benchmark_scores_together(tmp_path, photos):
    bench, _ = load("mmbench", tmp_path, photos)
    assert resample_units(bench) == [[0, 3, 6, 8], [1, 4], [2, 5, 7]]
    mme_records, _ = load("mme", tmp_path, photos)
    assert resample_units(mme_records) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    star, _ = load("mmstar", tmp_path, photos)
    assert resample_units(star) == [[k] for k in range(len(star))]


@pytest.fixture(scope="module")
def qwen(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    path = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    return path, load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=None, device="cpu"))


@pytest.mark.parametrize("name", sorted(READERS))
def test_each_suite_evaluates_end_to_end_on_a_tiny_checkpoint(name, qwen, tmp_path, photos):
    cls, write = READERS[name]
    source = cls(str(write(tmp_path, photos)))
    result = evaluate_source(qwen[1].model, qwen[1].processor, source, batch_size=4, progress=False)
    records, _ = source.load()
    preds = [a["prediction"] for a in result["answers"]]
    right = [judge(r, p)[0] for r, p in zip(records, preds)]
    official = result[name]
    if name == "mme":
        for task, v in official["by_subtask"].items():
            pairs = {}
            for r, ok in zip(records, right):
                if r["category"] == task:
                    pairs.setdefault(r["mme_image"], []).append(ok)
            acc_plus = sum(map(all, pairs.values())) / len(pairs)
            assert v["score"] == pytest.approx(100 * sum(map(sum, pairs.values())) / v["n"] + 100 * acc_plus)
        assert result["summary"]["mme_perception"] == pytest.approx(
            sum(official["by_subtask"][t]["score"] for t in ("existence", "count"))
        )
    elif name == "mmbench":
        questions = {}
        for r, ok in zip(records, right):
            questions.setdefault(r["mmbench_index"], []).append(ok)
        assert official["circular_accuracy"] == pytest.approx(sum(map(all, questions.values())) / len(questions))
        assert result["summary"]["mmbench_accuracy"] == pytest.approx(sum(right) / len(right))
    else:
        assert result["summary"][f"{name}_accuracy"] == pytest.approx(sum(right) / len(right))


@pytest.mark.slow
def test_evaluate_resolves_the_suites_by_class_name_in_a_fresh_interpreter(tmp_path):
    """`--data MMStar` in a fresh interpreter (this checkout's package first on the path): importing
    `mbpo_lit.data` makes the suites known to jsonargparse."""
    argv = ["evaluate", "--model", "m", "--data", "MMStar", "--data.path", "Lin-Chen/MMStar", "--data.split", "val"]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    }
    done = subprocess.run(
        [sys.executable, "-m", "mbpo_lit", *argv, "--print_config"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    config = yaml.safe_load(done.stdout)["data"]
    assert config["class_path"] == "mbpo_lit.data.suites.MMStar" and config["init_args"]["split"] == "val"


def test_evaluate_compare_gives_the_official_scores_paired_intervals(qwen, tmp_path, photos, capsys):
    path, base = qwen
    lora = load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=LoraSettings(r=4)))
    torch.manual_seed(0)
    with torch.no_grad():  # a large random LoRA B changes the answers
        for pname, p in lora.model.named_parameters():
            if "lora_B" in pname:
                p.normal_(0, 0.5)
    adapter = save_adapter(lora.model, tmp_path / "adapter")
    data = bf.mmbench(tmp_path, photos)
    out = tmp_path / "compare.json"
    args = ["--model", str(path), "--data", "MMBench", "--data.path", str(data), "--precision", "fp32"]
    main([*args, "--adapter", str(adapter), "--compare", "true", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["mmbench"]["questions"] == 3 and results["without_adapter"]["mmbench"]["n"] == 9
    for key in ("mmbench_accuracy", "mmbench_circular_accuracy"):
        before, after = results["without_adapter"]["summary"][key], results["summary"][key]
        c = results["change"][key]
        assert c["change"] == pytest.approx(after - before) and c["ci95_low"] <= c["change"] <= c["ci95_high"]
    assert "mmbench_circular_accuracy" in capsys.readouterr().out
