"""Data that streams: loading checks image headers and decodes no pixels, a record decodes its image when used
(and names itself if it cannot), records pickle without pixels, a hub id with `n` streams only n rows, TRL's
conversational and preference formats read as records, and a file in a benchmark's layout read as `Records`
names the class to use."""

import json
import pickle

import pytest
from datasets import Dataset, Features, Image, List, Value
from PIL import ImageFile

import benchmark_files as bf
from mbpo_lit.data.hybrid import HybridBatches, length_key
from mbpo_lit.data.lazy import Images, LazyRecord, fresh
from mbpo_lit.data.sources import Records, SourceError
from mbpo_lit.data.trl import Conversations, Preferences


@pytest.fixture
def decodes(monkeypatch):
    """Counts every pixel decoding (PIL's `ImageFile.load`) from here on."""
    calls = {"n": 0}
    original = ImageFile.ImageFile.load

    def counted(self):
        calls["n"] += 1
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    return calls


def test_loading_decodes_no_image_and_a_record_decodes_its_own_when_read(tmp_path, photos, decodes):
    for source in (
        Records(str(bf.vqa_jsonl(tmp_path / "f", photos)), answer_type="phrase"),
        Preferences_of(tmp_path, photos),
    ):
        records, skipped = source.load()
        assert len(records) == 4 and not skipped and decodes["n"] == 0
        assert [r["answer"] for r in records] and [length_key(r) for r in records] and decodes["n"] == 0
        assert records[2]["image"].size == photos[2].size and decodes["n"] > 0
        decodes["n"] = 0


def test_an_image_damaged_after_load_names_its_record_when_used(tmp_path, photos):
    source = Records(str(bf.vqa_jsonl(tmp_path, photos)), answer_type="phrase")
    records, skipped = source.load()
    damaged = (tmp_path / "images" / "2.jpg").read_bytes()
    (tmp_path / "images" / "2.jpg").write_bytes(damaged[: len(damaged) // 2])  # its header whole, its pixels not
    (tmp_path / "images" / "3.jpg").unlink()
    assert not skipped and records[1]["image"].size == photos[1].size
    with pytest.raises(SourceError, match=r"vqa.jsonl: record 2 \(id 2\): unreadable image: "):
        records[2]["image"].load()
    with pytest.raises(SourceError, match=r"record 3 \(id 3\): unreadable image: .*No such file"):
        dict(records[3])
    again, skipped = source.load()  # a fresh load lists the missing file; the header of the damaged one reads
    assert [s["index"] for s in skipped] == [3] and skipped[0]["reason"].startswith("unreadable image")


def test_records_pickle_without_pixels_and_copies_decode_apart(tmp_path, photos):
    records, _ = Records(str(bf.pope_hub(tmp_path, photos))).load()  # images embedded in the arrow table
    record = records[0]
    small = len(pickle.dumps(record))
    assert small < 2_000, small  # the image's whereabouts, not its bytes
    back = pickle.loads(pickle.dumps(records))[0]
    assert back["image"].size == photos[0].size and isinstance(back, LazyRecord)
    copy = fresh(record)
    assert copy["image"].size == photos[0].size and not isinstance(dict.get(record, "image"), type(photos[0]))
    assert {**record}["image"].size == photos[0].size and record.get("image").size == photos[0].size
    assert [im.size for im in Images(records)[1:3]] == [p.size for p in photos[1:3]]


def test_a_pool_hands_out_copies_so_its_records_stay_undecoded(tmp_path, photos):
    records, _ = Records(str(bf.vqa_jsonl(tmp_path, photos)), answer_type="phrase").load()
    pool = list(records)
    batches = HybridBatches([], pool, 0, 2, 8, seed=0, group_batches=2)
    for i in range(len(batches)):
        assert all(r["image"].size for r in batches[i]["online"])
    assert all(type(dict.get(r, "image")).__name__ == "ImageRef" for r in pool)


def test_a_hub_id_with_n_streams_only_n_rows(tmp_path, photos, monkeypatch):
    import datasets

    parquet = bf.write_parquet(tmp_path / "hub" / "train.parquet", rows_of(photos * 5), FEATURES)
    asked, served = [], {"rows": 0}
    real = datasets.load_dataset

    def hub(source, name=None, split="train", revision=None, streaming=False, **kw):
        asked.append((source, split, revision, streaming))
        data = real("parquet", data_files=str(parquet), split="train", streaming=streaming)
        if not streaming:
            return data
        return data.map(lambda r: served.__setitem__("rows", served["rows"] + 1) or r, features=data.features)

    monkeypatch.setattr(datasets, "load_dataset", hub)
    records, _ = Records("someone/vqa", n=3, revision="refs/convert/parquet").load()
    assert [r["id"] for r in records] == ["0", "1", "2"] and records[2]["image"].size == photos[2].size
    assert served["rows"] <= 3 + 1 and all(s and r == "refs/convert/parquet" for _, _, r, s in asked)
    asked.clear()
    spread, _ = Records("someone/vqa", n=4, spread=True).load()  # needs every row's position: the whole split
    assert [r["source_index"] for r in spread] == [0, 5, 10, 15] and asked == [("someone/vqa", "train", None, False)]


FEATURES = Features({"id": Value("string"), "image": Image(), "question": Value("string"), "answer": Value("string")})


def rows_of(photos):
    return [{"id": str(i), "image": p, "question": "Is it red?", "answer": "yes"} for i, p in enumerate(photos)]


def Preferences_of(tmp_path, photos):  # noqa: N802 - reads as the source it builds
    """A TRL conversational preference dataset with images (as `mine` writes), as a `Preferences` source."""
    rows = [
        {
            "prompt": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": q}]}],
            "chosen": [{"role": "assistant", "content": [{"type": "text", "text": a}]}],
            "rejected": [{"role": "assistant", "content": [{"type": "text", "text": r}]}],
            "images": [photo],
        }
        for photo, (q, a, r) in zip(photos, PAIRS)
    ]
    turn = [{"role": Value("string"), "content": [{"type": Value("string"), "text": Value("string")}]}]
    features = Features({"prompt": turn, "chosen": turn, "rejected": turn, "images": List(Image())})
    Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "pairs"))
    return Preferences(str(tmp_path / "pairs"))


PAIRS = [("Is there a person?", "yes", "no"), ("What is in the cup?", "coffee", "tea")]
PAIRS += [("What animal is this?", "cat", "dog"), ("What is launching?", "rocket", "a plane")]


def test_trl_preference_rows_conversational_and_plain_become_pairs_and_bad_ones_are_named(tmp_path, photos):
    records, skipped = Preferences_of(tmp_path, photos).load()
    assert [(r["question"], r["answer"], r["rejected"]) for r in records] == PAIRS and not skipped
    assert records[0]["choices"] is None and records[0]["prior_answer"] == ""
    photos[0].save(tmp_path / "a.png")
    plain = [{"prompt": "Is it red?", "chosen": "yes", "rejected": "no", "image": "a.png"}]
    plain += [{"prompt": "Is it red?", "chosen": "yes", "rejected": "Yes.", "image": "a.png"}]
    plain += [{"prompt": "Is it red?", "chosen": "yes", "rejected": " ", "image": "a.png"}]
    path = tmp_path / "plain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in plain))
    records, skipped = Preferences(str(path), answer_type="yes_no").load()
    assert [(r["question"], r["answer"], r["rejected"]) for r in records] == [("Is it red?", "yes", "no")]
    assert [(s["index"], s["reason"]) for s in skipped] == [
        (1, "rejected answer equals the chosen one"),
        (2, "missing rejected answer"),
    ]


def test_trl_messages_with_an_images_column_become_records(tmp_path, photos):
    rows = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": q}]},
                {"role": "assistant", "content": [{"type": "text", "text": a}]},
            ],
            "images": [photo] * (2 if i == 3 else 1),
        }
        for i, (photo, (q, a, _)) in enumerate(zip(photos, PAIRS))
    ]
    Dataset.from_list(rows).cast_column("images", List(Image())).save_to_disk(str(tmp_path / "chat"))
    records, skipped = Conversations(str(tmp_path / "chat")).load()
    assert [(r["question"], r["answer"]) for r in records] == [(q, a) for q, a, _ in PAIRS[:3]]
    assert records[1]["image"].size == photos[1].size and {r["answer_type"] for r in records} == {"phrase"}
    assert [(s["index"], s["reason"]) for s in skipped] == [(3, "unreadable image: 2 images: a record holds one")]
    with pytest.raises(SourceError, match=r"no column \['messages'\] \(Conversations\)"):
        Conversations(str(bf.vqa_jsonl(tmp_path / "v", photos))).load()


@pytest.mark.parametrize(
    "layout, cls",
    [("pope_github", "Pope"), ("aokvqa", "AOKVQA"), ("vqav2", "VQAv2"), ("amber", "Amber"), ("trl", "Preferences")],
)
def test_records_on_a_benchmark_file_names_the_class_that_reads_it(layout, cls, tmp_path, photos):
    make = {
        "pope_github": lambda: bf.pope_github(tmp_path, photos),
        "aokvqa": lambda: bf.aokvqa(tmp_path, photos),
        "vqav2": lambda: bf.vqav2(tmp_path, photos),
        "amber": lambda: bf.amber(tmp_path, photos),
        "trl": lambda: Preferences_of(tmp_path, photos).path,
    }
    with pytest.raises(SourceError, match=rf"; these columns are {cls}'s layout: use {cls}\(\.\.\.\) / --data {cls}$"):
        Records(str(make[layout]())).load()
