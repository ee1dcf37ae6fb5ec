"""The evaluator: scoring against hand-made records, free-form answers, POPE files, the world, the CLI."""

import json
import math

import pytest
import torch

import benchmark_files as bf
from mbpo_lit.data.benchmarks import AOKVQA, Amber, Pope
from mbpo_lit.data.captions import CocoChair
from mbpo_lit.data.sources import Records
from mbpo_lit.evaluate import main
from mbpo_lit.evaluation import (
    change_column,
    evaluate_records,
    evaluate_source,
    format_table,
    paired_change,
    score,
    summarize,
)
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.testbed.world_source import WorldSource, evaluate_world
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, load_policy, save_adapter

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


def test_paired_change_is_exact_on_the_full_set_and_its_interval_pairs_the_records():
    # 100 yes/no questions: the base answers the first 50 right, the trained model the first 55. Resampling the
    # records jointly, every draw has after >= before, so the interval of the change sits above zero; drawing the
    # two models' records independently would give an interval of about +-0.14 around 0.05, crossing zero.
    records = [rec("yes", "yes_no", "existence", "in_prior") | {"id": i} for i in range(100)]
    before = ["yes"] * 50 + ["no"] * 50
    after = ["yes"] * 55 + ["no"] * 45
    c = paired_change(records, before, after, n_boot=300)
    acc = c["accuracy"]
    assert (acc["before"], acc["after"]) == (0.5, 0.55) and acc["change"] == pytest.approx(0.05)
    assert 0 <= acc["ci95_low"] < 0.05 < acc["ci95_high"] <= 0.11
    assert c["pope_yes_ratio"]["change"] == pytest.approx(0.05)
    same = paired_change(records, before, before, n_boot=50)
    assert all(v["change"] == v["ci95_low"] == v["ci95_high"] == 0 for v in same.values())
    assert change_column(c)["accuracy"].startswith("+0.050 [")
    table = format_table({"before": {"accuracy": 0.5}, "change [95% CI]": change_column(c)})
    assert "+0.050 [" in table.splitlines()[1]


def test_a_change_the_bootstrap_gives_no_interval_says_so_in_the_console_and_the_model_card():
    """One counting question among 30: most resamples draw it, some do not, so its metric has no interval (NaN).
    The console table and the exported model card say "no interval", not "[+nan, +nan]"."""
    from mbpo_lit.train.card import before_after_table

    records = [rec("yes", "yes_no", "existence") | {"id": i} for i in range(29)] + [rec("3", "number", "count")]
    before, after = ["yes"] * 29 + ["2"], ["yes"] * 29 + ["3"]
    c = paired_change(records, before, after, n_boot=200)
    assert math.isnan(c["count_accuracy"]["ci95_low"]) and c["count_accuracy"]["change"] == 1.0
    assert change_column(c)["count_accuracy"] == "+1.000 [no interval]"
    assert change_column(c)["accuracy"].startswith("+0.033 [+")
    facts = {"before": {"summary": {k: v["before"] for k, v in c.items()}}, "after": {"summary": {}}, "change": c}
    card = before_after_table(facts)
    assert "| count_accuracy | 0.000 | - | +1.000 [no interval] |" in card and "nan" not in card


def test_paired_change_recomputes_chair_per_resample_and_refuses_unequal_lengths():
    records = [rec("", "description", "describe", objects=["red circle", "blue square"]) | {"id": i} for i in range(40)]
    before = ["a red circle and a blue square"] * 40
    after = ["a red circle and a blue square"] * 30 + ["a red circle and a green star"] * 10
    c = paired_change(records, before, after, vocabulary=WORLD.colors, mentions=MENTIONS, n_boot=100)
    # 10 of 80 mentions are hallucinated after, none before; CHAIR_s: 10 of 40 captions. No close-ended record:
    # no accuracy row (a 0 there would read as a score).
    assert "accuracy" not in c
    assert c["chair_i"]["change"] == pytest.approx(10 / 80) and c["chair_s"]["change"] == pytest.approx(0.25)
    assert 0 < c["chair_i"]["ci95_low"] < 10 / 80 < c["chair_i"]["ci95_high"]
    with pytest.raises(ValueError, match="40 records but 40 / 39 predictions"):
        paired_change(records, before, after[:-1])


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


def test_a_perfect_caption_has_chair_recall_one_and_no_hallucination():
    records = [rec("", "description", "describe", objects=["red circle", "blue square"])]
    for caption in (
        "a red circle and a blue square",
        "A circle and a square.",
        "Two shapes: a blue square, a red circle.",
    ):
        m = score(records, [caption], WORLD.colors, MENTIONS)["chair"]
        assert (m["recall"], m["chair_i"], m["chair_s"]) == (1.0, 0.0, 0.0), caption
    half = score(records, ["a red circle and a green square"], WORLD.colors, MENTIONS)
    assert half["chair"]["recall"] == 0.5 and half["chair"]["chair_i"] == 0.5
    assert summarize(half)["chair_recall"] == 0.5


def test_pope_files_read_by_glob_are_scored_per_subset(tmp_path, photos):
    for category in ("random", "popular", "adversarial"):
        bf.pope_github(tmp_path, photos[:2], category)
    records, _ = Pope(str(tmp_path / "coco_pope_*.json"), image_root=str(tmp_path / "val2014")).load()
    # Each file: yes, no, yes, no. Qwen-style sentences; the adversarial subset answers yes to everything.
    right = ["Yes, there is a person in the image.", "No, there is no dog in the image."] * 2
    preds = ["Yes, there is a dog in the image."] * 4 + right + ["Yes.", "There is not a dog.", "No.", "No"]
    m = score(records, preds)
    assert set(m["pope_by_type"]) == {"random", "popular", "adversarial"} and "amber" not in m
    adv, rnd = m["pope_by_type"]["adversarial"], m["pope_by_type"]["random"]
    assert (adv["accuracy"], adv["precision"], adv["recall"], adv["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)
    assert adv["f1"] == pytest.approx(2 / 3)
    assert m["pope_by_type"]["popular"]["f1"] == 1.0
    assert (rnd["accuracy"], rnd["precision"], rnd["recall"], rnd["yes_ratio"]) == (0.75, 1.0, 0.5, 0.25)
    assert m["by_group"]["random"]["accuracy"] == 0.75 and m["pope"]["n"] == 12


def test_amber_is_scored_with_no_as_positive_per_type(tmp_path, photos):
    path = bf.amber(tmp_path, photos)
    records, _ = Amber(str(path), image_root=str(tmp_path / "image")).load()
    # truths: yes no | yes no no | yes no | yes
    preds = [
        "Yes, there is a person in this image.",
        "No, there is no dog in this image.",
        "No, the cup is not white.",
        "No.",
        "Yes, the cat is sleeping.",
        "Yes.",
        "No, they are not touching.",
        "Yes, there is a rocket.",
    ]
    m = score(records, preds)
    assert "pope" not in m and set(m["amber_by_type"]) == {"existence", "attribute", "relation"}
    assert m["amber_by_type"]["existence"]["accuracy"] == 1.0 and m["amber_by_type"]["relation"]["f1"] == 1.0
    attr = m["amber_by_type"]["attribute"]  # predicted no, no, yes against yes, no, no: TP=1 FP=1 FN=1
    assert (attr["precision"], attr["recall"], attr["no_ratio"]) == (0.5, 0.5, pytest.approx(2 / 3))
    assert m["amber"]["accuracy"] == pytest.approx(6 / 8) and m["by_group"]["attribute"]["accuracy"] == pytest.approx(
        1 / 3
    )
    flat = summarize(m)
    assert flat["amber_f1"] == m["amber"]["f1"] and flat["amber_attribute_f1"] == 0.5 and "pope_f1" not in flat


def test_coco_captions_are_scored_by_chair_against_the_instances(tmp_path, photos):
    src = CocoChair(str(bf.coco_instances(tmp_path, photos)), image_root=str(tmp_path / "val2014"))
    records, _ = src.load()  # person | cup, dining table | cat | nothing
    perfect = [
        "An astronaut, a man in a white suit, stands in front of a flag.",
        "A cup of coffee on a wooden table.",
        "A cat lying down.",
        "A rocket launching into the sky.",
    ]
    m = score(records, perfect, src.vocabulary, src.mentions)["chair"]
    assert (m["recall"], m["chair_i"], m["chair_s"], m["mentions"]) == (1.0, 0.0, 0.0, 4)
    halluc = ["A man with a dog.", "Two cups.", "A cat eating a hot dog.", "A rocket and people."]
    m = score(records, halluc, src.vocabulary, src.mentions)["chair"]
    # mentions: person dog | cup | cat "hot dog" | person: 3 of 6 hallucinated, in 3 of 4 captions ("hot dog" is
    # no dog); recalled: person, cup, cat of person, cup, dining table, cat
    assert (m["chair_i"], m["chair_s"], m["recall"], m["mentions"]) == (0.5, 0.75, 0.75, 6)


def test_verbose_answers_to_a_generic_vqa_file_and_to_multiple_choice(tmp_path, photos):
    records, _ = Records(str(bf.vqa_jsonl(tmp_path / "v", photos)), answer_type="phrase").load()
    preds = ["The person is wearing a spacesuit.", "There is no coffee in the cup.", "Cats.", "It is a rocket."]
    m = score(records, preds)
    assert m["all"] == {"accuracy": 0.75, "n": 4, "unparseable": 0}
    records, _ = AOKVQA(str(bf.aokvqa(tmp_path / "a", photos))).load()
    preds = ["The answer is (A).", "A cup of coffee.", "C. a cat", "The answer is a cat."]
    assert score(records, preds)["by_family"]["choice"] == {"accuracy": 0.75, "n": 4, "unparseable": 0}


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
    result = evaluate_source(qwen[1].model, qwen[1].processor, Pope(str(path)), batch_size=2, progress=False)
    assert result["pope"]["n"] == 4 and set(result["pope_by_type"]) == {"adversarial", "popular", "random"}
    assert set(result["summary"]) >= {"accuracy", "random_accuracy", "pope_f1", "pope_yes_ratio"}
    m, preds = evaluate_records(
        qwen[1].model, qwen[1].processor, Pope(str(path)).load()[0], batch_size=4, progress=False
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
            "Pope",
            "--data.path",
            str(path),
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
    assert results["summary"]["skipped_records"] == 1
    printed = capsys.readouterr().out
    assert "pope_f1" in printed and "record 4 (id 9): unreadable image" in printed


def test_cli_compare_scores_the_model_with_and_without_the_adapter_on_the_same_records(qwen, tmp_path, capsys, photos):
    path, base = qwen
    lora = load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=LoraSettings(r=4)))
    torch.manual_seed(0)
    with torch.no_grad():  # fresh LoRA B is zero (a no-op adapter); a large random one changes the answers
        for name, p in lora.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    adapter = save_adapter(lora.model, tmp_path / "adapter")
    records = Pope(str(bf.pope_github(tmp_path, photos)), image_root=str(tmp_path / "val2014"))
    plain = [a["prediction"] for a in evaluate_source(base.model, base.processor, records, progress=False)["answers"]]
    out = tmp_path / "compare.json"
    args = ["--model", str(path), "--data", "Pope", "--data.path", str(records.path)]
    args += ["--data.image_root", str(tmp_path / "val2014"), "--precision", "fp32", "--out", str(out)]
    main([*args, "--adapter", str(adapter), "--compare", "true"])
    results = json.loads(out.read_text())
    # "without adapter" is the plain model's answers exactly; with the adapter they differ.
    assert [a["prediction"] for a in results["without_adapter"]["answers"]] == plain
    assert [a["prediction"] for a in results["answers"]] != plain
    for metric in ("accuracy", "pope_yes_ratio"):
        before, after = results["without_adapter"]["summary"][metric], results["summary"][metric]
        assert results["change"][metric]["change"] == pytest.approx(after - before)
    assert "change [95% CI]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*args, "--compare", "true"])
    assert "give --adapter" in capsys.readouterr().err


def test_cli_user_mistakes_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "d.jsonl")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
