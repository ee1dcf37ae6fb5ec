"""The evaluator: scoring against hand-made records, free-form answers, POPE files, the world, the CLI."""

import json

import pytest

import benchmark_files as bf
from mbpo_lit.data.sources import Records
from mbpo_lit.evaluate import evaluate_records, evaluate_source, main, score, summarize
from mbpo_lit.testbed.world import WorldConfig, build_records
from mbpo_lit.testbed.world_source import WorldSource, evaluate_world
from mbpo_lit.vlm.policy import ModelConfig, load_policy

WORLD = WorldConfig(image_size=56)
MENTIONS = WorldSource(world=WORLD).mentions


def rec(answer, answer_type, family, group="in_prior", pope_type="", objects=()):
    return dict(
        answer=answer,
        answer_type=answer_type,
        family=family,
        group=group,
        pope_type=pope_type,
        objects=list(objects),
        id=f"r-{family}-{answer}",
    )


def test_score_against_hand_computed_values():
    records = [
        rec("red", "color", "attribute", "in_prior"),
        rec("blue", "color", "attribute", "counter_prior"),
        rec("green", "color", "attribute", "counter_prior"),
        rec("yes", "yes_no", "existence", "in_prior", "random"),
        rec("no", "yes_no", "existence", "counter_prior", "adversarial"),
        rec("B", "choice", "choice", "counter_prior"),
        rec("a red circle and a blue square", "description", "describe", objects=["red circle", "blue square"]),
    ]
    preds = ["Red.", "red", "%%%", "yes", "yes", "(B)", "a red circle, a blue square and a green star"]
    m = score(records, preds, WORLD.colors, MENTIONS)
    assert m["by_family"]["attribute"] == {"accuracy": pytest.approx(1 / 3), "n": 3, "unparseable": 1}
    assert m["by_group"]["in_prior"]["accuracy"] == 1.0  # red + yes
    assert m["by_group"]["counter_prior"]["accuracy"] == pytest.approx(1 / 4)  # only the choice
    assert m["by_cell"]["attribute/counter_prior"] == {"accuracy": 0.0, "n": 2}
    assert m["all"] == {"accuracy": pytest.approx(3 / 6), "n": 6, "unparseable": 1}
    assert m["pope"]["accuracy"] == 0.5 and m["pope"]["yes_ratio"] == 1.0
    assert set(m["pope_by_type"]) == {"random", "adversarial"}
    assert m["by_family"]["choice"]["accuracy"] == 1.0
    assert m["chair"]["chair_i"] == pytest.approx(1 / 3) and m["chair"]["chair_s"] == 1.0
    flat = summarize(m)
    assert flat["counter_prior_accuracy"] == pytest.approx(1 / 4) and flat["attribute/in_prior_accuracy"] == 1.0
    assert flat["pope_f1"] == m["pope"]["f1"] and flat["chair_i"] == pytest.approx(1 / 3)


def test_a_description_without_a_mention_parser_is_refused_by_record():
    with pytest.raises(ValueError, match="record 'r-describe-x': scoring a description needs the source's `mentions`"):
        score([rec("x", "description", "describe", objects=["red circle"])], ["a red circle"])


def test_free_form_garbage_never_crashes_and_counts_as_wrong():
    families = ("attribute", "existence", "count", "choice", "describe")
    records = build_records(WORLD, "eval_counter_prior", 10, families)
    preds = ["", "\x00\x01", "🙂", "zzz", "(", "The", " ", "??", "...", "\n"]
    m = score(records, preds, WORLD.colors, MENTIONS)
    closed = [r for r in records if r["answer_type"] != "description"]
    assert m["all"] == {"accuracy": 0.0, "n": len(closed), "unparseable": len(closed)}
    for family in families[:-1]:
        n = sum(r["family"] == family for r in records)
        assert m["by_family"][family] == {"accuracy": 0.0, "n": n, "unparseable": n}
    assert m["chair"]["n"] == 10 - len(closed) and m["pope"]["yes_ratio"] == 0.0


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


def test_a_pope_file_of_real_photographs_is_scored_by_category(qwen, tmp_path, photos):
    path = bf.pope_hub(tmp_path, photos)
    result = evaluate_source(
        qwen[1].model, qwen[1].processor, Records(str(path), format="pope"), batch_size=2, progress=False
    )
    assert result["pope"]["n"] == 4 and set(result["pope_by_type"]) == {"adversarial", "popular", "random"}
    assert set(result["summary"]) >= {"accuracy", "random_accuracy", "pope_f1", "pope_yes_ratio"}
    m, preds = evaluate_records(
        qwen[1].model, qwen[1].processor, Records(str(path), format="pope").load()[0], batch_size=4, progress=False
    )
    assert len(preds) == 4 and m["all"]["n"] == 4


def test_cli_writes_json_and_lists_skipped_records(qwen, tmp_path, capsys, photos):
    path = bf.pope_github(tmp_path, photos[:2])
    lines = path.read_text().splitlines()
    path.write_text(
        "\n".join(lines + [json.dumps({"question_id": 9, "image": "gone.jpg", "text": "Is it?", "label": "yes"})])
    )
    out = tmp_path / "results.json"
    main(
        [
            "--model",
            str(qwen[0]),
            "--data",
            "Records",
            "--data.path",
            str(path),
            "--data.format",
            "pope",
            "--data.image_root",
            str(tmp_path / "val2014"),
            "--precision",
            "fp32",
            "--out",
            str(out),
        ]
    )
    results = json.loads(out.read_text())
    assert results["pope"]["n"] == 4 and [s["id"] for s in results["skipped"]] == ["9"]
    printed = capsys.readouterr().out
    assert "pope_f1" in printed and "record 4 (id 9): unreadable image" in printed


def test_cli_user_mistakes_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "d.jsonl")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
