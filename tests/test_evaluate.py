"""The evaluator: scoring against hand-made records, free-form answers, POPE-format files, the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from mbpo_lit.evaluate import evaluate_records, evaluate_world, load_pope_records, main, score
from mbpo_lit.vlm.policy import ModelConfig, load_policy
from mbpo_lit.testbed.world import WorldConfig, build_records

WORLD = WorldConfig(image_size=56)


def rec(answer, answer_type, family, follows_prior=True, pope_type="", objects=()):
    return dict(answer=answer, answer_type=answer_type, family=family, follows_prior=follows_prior,
                pope_type=pope_type, objects=list(objects), id=f"r-{family}-{answer}")


def test_score_against_hand_computed_values():
    records = [
        rec("red", "color", "attribute", True),
        rec("blue", "color", "attribute", False),
        rec("green", "color", "attribute", False),
        rec("yes", "yes_no", "existence", True, "random"),
        rec("no", "yes_no", "existence", False, "adversarial"),
        rec("B", "choice", "choice", False),
        rec("a red circle and a blue square", "description", "describe", objects=["red circle", "blue square"]),
    ]
    preds = ["Red.", "red", "%%%", "yes", "yes", "(B)", "a red circle, a blue square and a green star"]
    m = score(records, preds, WORLD)
    assert m["by_family"]["attribute"] == {"accuracy": pytest.approx(1 / 3), "n": 3, "unparseable": 1}
    assert m["by_prior"]["in_prior"]["accuracy"] == 1.0  # red + yes
    assert m["by_prior"]["counter_prior"]["accuracy"] == pytest.approx(1 / 4)  # only the choice
    assert m["by_prior"]["gap"] == pytest.approx(3 / 4)
    assert m["pope"]["accuracy"] == 0.5 and m["pope"]["yes_ratio"] == 1.0
    assert set(m["pope_by_type"]) == {"random", "adversarial"}
    assert m["by_family"]["choice"]["accuracy"] == 1.0
    assert m["chair"]["chair_i"] == pytest.approx(1 / 3) and m["chair"]["chair_s"] == 1.0


def test_free_form_garbage_never_crashes_and_counts_as_wrong():
    records = build_records(WORLD, "eval_counter_prior", 10, ("attribute", "existence", "count", "choice", "describe"))
    preds = ["", "\x00\x01", "🙂", "A", "zzz", "yes no", "12345678901234567890", "(", "The", " "]
    m = score(records, preds, WORLD)
    total = sum(f["n"] for f in m["by_family"].values()) + m["chair"]["n"]
    assert total == 10


@pytest.fixture(scope="module")
def qwen(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    path = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    return path, load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=None, device="cpu"))


def test_evaluate_world_reports_every_split_and_metric(qwen):
    _, policy = qwen
    r = evaluate_world(policy.model, policy.processor, WORLD, n=10, batch_size=4, progress=False)
    for split in ("eval_in_prior", "eval_counter_prior"):
        assert sum(f["n"] for f in r[split]["by_family"].values()) + r[split]["chair"]["n"] == 10
        assert {"f1", "yes_ratio"} <= set(r[split]["pope"]) and "iig" in r[split]
    assert set(r["summary"]) >= {"in_prior_accuracy", "counter_prior_accuracy", "gap", "pope_f1", "chair_s"}


def write_pope(tmp_path, rows):
    for i in range(2):
        Image.fromarray(np.full((56, 56, 3), 60 * i, dtype="uint8")).save(tmp_path / f"img{i}.png")
    path = tmp_path / "pope.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def test_pope_file_is_read_and_scored(qwen, tmp_path):
    rows = [{"image": "img0.png", "question": "Is there a circle in the image?", "answer": "yes", "category": "random"},
            {"image": "img1.png", "question": "Is there a star in the image?", "answer": "no", "category": "popular"}]
    records = load_pope_records(str(write_pope(tmp_path, rows)))
    assert [r["answer"] for r in records] == ["yes", "no"] and records[1]["pope_type"] == "popular"
    m, preds = evaluate_records(qwen[1].model, qwen[1].processor, records, None, batch_size=2, progress=False)
    assert len(preds) == 2 and m["pope"]["n"] == 2


@pytest.mark.parametrize("bad, message", [({"answer": None}, "record 1 has no yes/no answer"),
                                          ({"image": "missing.png"}, "record 1 has an unreadable image")])
def test_bad_pope_record_is_named(tmp_path, bad, message):
    rows = [{"image": "img0.png", "question": "q?", "answer": "yes"},
            {"image": "img1.png", "question": "q?", "answer": "no"} | bad]
    with pytest.raises(ValueError, match=message):
        load_pope_records(str(write_pope(tmp_path, rows)))


def test_cli_writes_json(qwen, tmp_path, capsys):
    rows = [{"image": "img0.png", "question": "Is there a circle?", "answer": "yes"}]
    out = tmp_path / "results.json"
    main(["--model", str(qwen[0]), "--data", str(write_pope(tmp_path, rows)), "--out", str(out)])
    assert json.loads(out.read_text())["pope"]["n"] == 1
    assert "f1" in capsys.readouterr().out
