"""The model's answer without visual evidence (grey image, no image), the rejected answer's IIG, the pair filters
that read them ("prior_conflict", "iig_margin"), and the summary's cross-tabulation of the kept pairs."""

import json
from collections import Counter

import pytest
import torch
from datasets import load_dataset, load_from_disk

from mbpo_lit.core.answers import normalize_phrase
from mbpo_lit.data.sources import Records
from mbpo_lit.evaluation.evaluator import greedy_answers
from mbpo_lit.mining import MineConfig, Miner, apply_iig_filter, apply_pair_filter, mine_pairs
from mbpo_lit.mining.config import settings_json
from mbpo_lit.mining.prior import image_free_answers
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world_source import WorldSource
from mbpo_lit.vlm.chat import image_token_id, user_message
from mbpo_lit.vlm.iig import image_information_gain, neutral_image
from mbpo_lit.vlm.policy import ModelConfig, load_policy
from mbpo_lit.vlm.sampling import SamplingRule, answer_texts

COLORS = ["red", "blue", "green", "yellow"]


@pytest.fixture(scope="module")
def qwen_path(tiny_root):
    return str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))


def photo_source(tmp_path, photos, answers):
    """A jsonl of the photographs (mixed sizes) with phrase answers: no vocabulary, so any text is an answer."""
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.jpg")
    rows = [
        {"image": f"{i % len(photos)}.jpg", "question": "What is in the picture?", "answer": a, "id": f"r{i}"}
        for i, a in enumerate(answers)
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(tmp_path / "d.jsonl")


def candidates(out) -> list[dict]:
    """Every candidate a job wrote (its shards), scalar columns only."""
    shards = sorted(str(p) for p in (out / "shards").glob("*.parquet"))
    rows = load_dataset("parquet", data_files=shards, split="train")
    return [dict(r) for r in rows.remove_columns(["images", "perturbed_image"])]


def text(message) -> str:
    return message[0]["content"][0]["text"]


def test_image_free_answers_are_the_models_greedy_answers(tiny_path, photos):
    """On every architecture: the grey answer is the greedy answer on a uniform (128,128,128) image of the
    record's own size, decoded record by record by the evaluator; the no-image answer is the greedy answer to the
    chat-formatted question alone (no image placeholder), decoded record by record."""
    policy = load_policy(ModelConfig(str(tiny_path), precision="fp32", quantization="none", lora=None, device="cpu"))
    model, processor = policy.model, policy.processor
    qs = ["What is in the picture?", "Is there a cat?", "What color is it?", "How many objects are there?"]
    grey, blind = image_free_answers(model, processor, qs, photos, max_new_tokens=8)
    for q, photo, g, b in zip(qs, photos, grey, blind):
        flat = neutral_image(photo)
        assert flat.size == photo.size and set(flat.getdata()) == {(128, 128, 128)}
        assert [g] == greedy_answers(model, processor, [q], [flat], max_new_tokens=8, progress=False)
        prompt = processor.apply_chat_template(user_message(q, False), add_generation_prompt=True, tokenize=False)
        alone = processor.tokenizer([prompt], return_tensors="pt")  # LLaVA's BOS, as with an image
        assert image_token_id(processor) not in alone["input_ids"][0].tolist()
        assert [b] == answer_texts(model, processor, alone, 8, SamplingRule.of(model, processor))


def test_mined_rows_hold_the_image_free_answers_and_the_rejected_iig(qwen_path, tmp_path, photos):
    """The mined columns: `answer_grey` / `answer_no_image` are the model's greedy answers without visual evidence,
    `iig_rejected_*` the IIG of the rejected answer on the clean image (as `iig_*` is the chosen answer's)."""
    source = photo_source(tmp_path, photos, ["zebra crossing"] * 4)
    cfg = MineConfig(model=qwen_path, source=source, out=str(tmp_path / "m"), n=4, steps=1, iig_filter="none")
    mine_pairs(cfg, progress=False)
    rows = candidates(tmp_path / "m")
    policy = load_policy(ModelConfig(qwen_path, precision="fp32", quantization="none", lora=None, device="cpu"))
    model, processor = policy.model, policy.processor
    qs, images = [r["question"] for r in rows], [r["image"] for r in Records(source).load()[0]]  # the JPEGs read
    greys = [neutral_image(im) for im in images]
    assert [r["answer_grey"] for r in rows] == greedy_answers(model, processor, qs, greys, 4, 16, progress=False)
    assert [r["answer_no_image"] for r in rows] == image_free_answers(model, processor, qs, images, 16)[1]
    rejected = [text(r["rejected"]) for r in rows]
    gain = image_information_gain(model, processor, qs, rejected, images, batch_size=4)
    assert torch.allclose(torch.tensor([r["iig_rejected_mean"] for r in rows]), gain.mean, atol=1e-4)
    assert torch.allclose(torch.tensor([r["iig_rejected_sum"] for r in rows]), gain.sum, atol=1e-4)
    chosen = image_information_gain(model, processor, qs, [r["answer"] for r in rows], images, batch_size=4)
    assert torch.allclose(torch.tensor([r["iig_mean"] for r in rows]), chosen.mean, atol=1e-4)


def world_row(i, answer, rejected, grey, blind, iig=(0.0, 0.0)) -> dict:
    return {
        "source_index": i,
        "answer": answer,
        "answer_type": "color",
        "choices": "[]",
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
        "answer_grey": grey,
        "answer_no_image": blind,
        "iig_mean": iig[0],
        "iig_rejected_mean": iig[1],
        "kept": True,
    }


def test_prior_conflict_compares_answers_by_the_verifier_and_reads_the_configured_side():
    rows = [
        world_row(0, "blue", "The star is red.", "Red.", "green"),  # grey says the rejected colour
        world_row(1, "blue", "red", "It is a red star", "RED"),  # both sides say it
        world_row(2, "blue", "red", "green", "The colour is red."),  # only the no-image side
        world_row(3, "blue", "red", "I cannot tell.", "a shape"),  # no colour without the image: matches nothing
        world_row(4, "red", "green", "Red.", "red"),  # the image-free answer is the chosen one
    ]
    cfg = MineConfig("model", "source", iig_filter="none", pair_filter="prior_conflict")
    kept = {}
    for side, expected in [("grey", [0, 1]), ("no_image", [1, 2]), ("either", [0, 1, 2])]:
        cfg.prior_from = side
        kept[side] = [r["source_index"] for r in apply_pair_filter(rows, cfg, COLORS)]
        assert kept[side] == expected, side
    cfg.iig_filter = "high"  # on top of the IIG rule: of the high-IIG half only
    for r, v in zip(rows, [0.9, 0.1, 0.8, 0.7, 0.6]):
        r["iig_mean"] = v
    assert [r["source_index"] for r in apply_pair_filter(rows, cfg, COLORS)] == [0, 2]


def test_iig_margin_ranks_by_the_chosen_iig_over_the_rejected():
    gains = [(1.0, 0.9), (0.5, -0.5), (0.2, 0.3), (0.8, -0.1)]  # margins 0.1, 1.0, -0.1, 0.9
    rows = [world_row(i, "blue", "red", "", "", iig) for i, iig in enumerate(gains)]
    cfg = MineConfig("model", "source", pair_filter="iig_margin", iig_fraction=0.5)
    assert [r["source_index"] for r in apply_pair_filter(rows, cfg)] == [1, 3]
    cfg.iig_filter, cfg.iig_threshold = "low", 0.5
    assert [r["source_index"] for r in apply_pair_filter(rows, cfg)] == [0, 2]


def test_the_default_filter_is_the_iig_rule_and_the_old_settings():
    rows = [
        world_row(i, "blue", "red", "red", "red", iig) for i, iig in enumerate([(0.1, 5), (2, 0), (-1, 0), (0.5, 9)])
    ]
    cfg = MineConfig("model", "source")
    assert cfg.pair_filter == "iig" and cfg.iig_filter == "high" and cfg.iig_fraction == 0.5
    assert [r["source_index"] for r in apply_pair_filter(rows, cfg, COLORS)] == [1, 3]
    assert apply_pair_filter(rows, cfg, COLORS) == apply_iig_filter(rows, cfg)
    # a job started before the option existed resumes: the default leaves the settings as they were
    assert "pair_filter" not in settings_json(cfg) and "prior_from" not in settings_json(cfg)
    assert '"pair_filter": "prior_conflict"' in settings_json(MineConfig("m", "s", pair_filter="prior_conflict"))


def conflicts_by_hand(row: dict) -> bool:
    """The prior-conflict rule on phrase records without a vocabulary, written out: the verifier reads a phrase as
    its normalized text, and the ground truth takes its own text or its phrase."""
    rejected, grey, truth = normalize_phrase(text(row["rejected"])), normalize_phrase(row["answer_grey"]), row["answer"]
    return bool(grey) and rejected == grey and grey != normalize_phrase(truth)


def test_a_prior_conflict_job_keeps_exactly_the_pairs_the_rule_names(qwen_path, tmp_path, photos, monkeypatch):
    """End to end: the dataset holds exactly the wrong-answer candidates whose rejected answer is their grey
    answer and whose chosen answer is not, in source order. The tiny model's grey answers rarely repeat its
    rejected ones, so every other record's grey answer is set to its rejected answer, the rest to the ground
    truth (both cases then occur)."""
    row = Miner.row

    def rigged(self, rec, source_index, **kw):
        kw["free"] = (kw["rejected"] if source_index % 2 == 0 else rec["answer"], kw["free"][1])
        return row(self, rec, source_index, **kw)

    monkeypatch.setattr(Miner, "row", rigged)
    source = photo_source(tmp_path, photos, ["zebra crossing", "a red bus", "zebra crossing", "two cats"] * 2)
    kw = dict(model=qwen_path, source=source, n=8, steps=1, iig_filter="none", pair_filter="prior_conflict")
    data = load_from_disk(str(mine_pairs(MineConfig(out=str(tmp_path / "m"), **kw), progress=False)))
    rows = candidates(tmp_path / "m")
    expected = [r["id"] for r in rows if r["kept"] and conflicts_by_hand(r)]
    assert 0 < len(expected) < len(rows) and data["id"] == expected
    summary = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert summary["pair_filter"] == "prior_conflict" and summary["pairs"] == len(expected)
    assert summary["prior_conflict_candidates"]["grey"] == len(expected)


def test_the_summary_cross_tabulates_the_kept_pairs(qwen_path, tmp_path, photos):
    """By group, clean correctness and rejected-is-prior for the world (which knows the prior's answer); the cells
    add up to the pairs and match the dataset's own columns. A source without the prior's answer has no such axis."""
    out = tmp_path / "w"
    cfg = MineConfig(out=str(out), model=qwen_path, source=WorldSource(["train"], 8), n=8, steps=1)  # high-IIG half
    data = load_from_disk(str(mine_pairs(cfg, progress=False)))
    summary = json.loads((out / "summary.json").read_text())
    cells = summary["pairs_by"]
    assert sum(c["pairs"] for c in cells) == summary["pairs"] == len(data) > 0
    assert summary["rejected_wrong"] > len(data)  # the filter dropped some: cells count kept pairs, not candidates
    assert all(set(c) == {"group", "clean_correct", "rejected_is_prior", "pairs"} for c in cells)
    by_hand = Counter(zip(data["group"], data["clean_correct"], data["rejected_is_prior"]))
    assert {(c["group"], c["clean_correct"], c["rejected_is_prior"]): c["pairs"] for c in cells} == by_hand
    photo = MineConfig(out=str(tmp_path / "p"), model=qwen_path, source=photo_source(tmp_path, photos, ["a cat"] * 4))
    mine_pairs(MineConfig(**(vars(photo) | dict(n=4, steps=1, iig_filter="none"))), progress=False)
    cells = json.loads((tmp_path / "p" / "summary.json").read_text())["pairs_by"]
    assert cells and all(set(c) == {"group", "clean_correct", "pairs"} for c in cells)


def test_the_default_job_keeps_the_high_iig_half_as_before(qwen_path, tmp_path):
    """With the default filter a job keeps what it kept before the new columns existed: the high-IIG half of
    the wrong-answer candidates by the chosen answer's IIG (ties by source index), in source order."""
    out = tmp_path / "d"
    cfg = MineConfig(out=str(out), model=qwen_path, source=WorldSource(["train"], 8), n=8, steps=1, batch_size=4)
    data = load_from_disk(str(mine_pairs(cfg, progress=False)))
    wrong = [r for r in candidates(out) if r["kept"]]
    ranked = sorted(wrong, key=lambda r: (-r["iig_mean"], -r["source_index"]))[: max(1, round(len(wrong) / 2))]
    expected = [r["id"] for r in wrong if r in ranked]
    assert len(wrong) >= 2 and data["id"] == expected
    assert [text(m) for m in data["rejected"]] == [text(r["rejected"]) for r in wrong if r in ranked]
    assert json.loads((out / "config.json").read_text()).keys().isdisjoint({"pair_filter", "prior_from"})
