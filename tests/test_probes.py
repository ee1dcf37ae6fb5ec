"""The ablation's final evaluation (`testbed.probes`): held-out kinds left out of the training streams and scored
apart, held-out phrasings, the exact KL to the base model, and pair filters re-applied to mined candidates."""

import dataclasses
import json
from collections import Counter

import pytest
import torch
from datasets import load_from_disk

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.testbed import probes
from mbpo_lit.testbed.probes import HELDOUT_PHRASINGS, Probes, evaluate_policy, rephrase
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.testbed.world_source import WorldSource

HELD = ["triangle", "ring"]


def test_excluded_kinds_are_never_asked_about_and_the_split_keeps_its_size():
    full = WorldSource(["train"], 400, ["attribute", "existence", "count"]).load()[0]
    kept = WorldSource(["train"], 120, ["attribute", "existence", "count"], exclude_kinds=HELD).load()[0]
    assert len(kept) == 120 and not any(r["query_kind"] in HELD for r in kept)
    assert any(r["query_kind"] in HELD for r in full)  # the unfiltered split does ask about them
    # a subsequence of the unfiltered split: the same records, those on held-out kinds skipped
    assert [r["id"] for r in kept] == [r["id"] for r in full if r["query_kind"] not in HELD][:120]
    assert Counter(r["family"] for r in kept)["count"] > 0  # questions about no kind stay
    only = WorldSource(["eval_counter_prior"], 30, ["attribute"], only_kinds=HELD).load()[0]
    assert len(only) == 30 and {r["query_kind"] for r in only} == set(HELD)
    assert all(r["group"] == "counter_prior" for r in only)


def test_kind_filters_refuse_unknown_kinds_and_empty_selections():
    with pytest.raises(ValueError, match="exclude_kinds: unknown kinds \\['hexagon'\\]"):
        WorldSource(exclude_kinds=["hexagon"])
    with pytest.raises(ValueError, match="leave no kind"):
        WorldSource(exclude_kinds=WorldConfig().kinds)
    with pytest.raises(ValueError, match="too few questions"):
        WorldSource(["train"], 2, ["count"], only_kinds=["circle"]).load()


def test_rephrase_asks_the_same_question_in_each_new_wording_in_turn():
    records = WorldSource(["eval_counter_prior"], 6, ["attribute"]).load()[0]
    out = rephrase(records, HELDOUT_PHRASINGS)
    assert [r["question"] for r in out] == [
        HELDOUT_PHRASINGS[i % 3].format(kind=r["query_kind"]) for i, r in enumerate(records)
    ]
    assert [r["answer"] for r in out] == [r["answer"] for r in records]
    assert all(r["question"] != o["question"] for r, o in zip(records, out))
    choice = WorldSource(["eval_counter_prior"], 1, ["choice"]).load()[0]
    with pytest.raises(ValueError, match="is not the attribute template"):
        rephrase(choice, HELDOUT_PHRASINGS)


@pytest.fixture(scope="module")
def policy(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
    from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, load_policy

    path = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    torch.manual_seed(0)
    return load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=LoraSettings(r=4)))


def test_sequence_kl_is_zero_at_the_start_and_the_full_vocabulary_sum_after_a_change(policy):
    from mbpo_lit.evaluation.drift import sequence_kl
    from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts

    model, processor = policy.model, policy.processor
    records = WorldSource(["eval_counter_prior"], 3, ["attribute"]).load()[0]
    args = ([r["question"] for r in records], [r["image"] for r in records], ["red", "blue blue", "green"])
    assert sequence_kl(model, processor, *args).abs().max() < 1e-6  # fresh LoRA: B = 0, the policy is the base
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    with torch.no_grad():
        for p in lora_b:
            p.normal_(0, 0.5)
    kl = sequence_kl(model, processor, *args, batch_size=2)
    # by hand, one record at a time, from the full logits of both models (eval mode: no LoRA dropout)
    model.eval()
    for i in range(3):
        batch = encode_prompts(processor, [args[0][i]], [args[1][i]])
        ids = answer_token_ids(processor, [args[2][i]])[0]
        batch, _ = append_completions(batch, [ids], processor.tokenizer.pad_token_id)
        with torch.no_grad():
            logp = model(**batch).logits[0, -len(ids) - 1 : -1].log_softmax(-1)
            with model.disable_adapter():
                ref = model(**batch).logits[0, -len(ids) - 1 : -1].log_softmax(-1)
        assert kl[i].item() == pytest.approx((logp.exp() * (logp - ref)).sum().item(), rel=1e-4)
    assert (kl > 0).all()
    with torch.no_grad():
        for p in lora_b:
            p.zero_()


def test_the_final_evaluation_scores_each_probe_on_its_own_records(policy, monkeypatch):
    seen = []
    score = probes._accuracy

    def spy(model, processor, records, world, family="attribute"):
        seen.append(records)
        return score(model, processor, records, world, family)

    monkeypatch.setattr(probes, "_accuracy", spy)
    out = evaluate_policy(policy.model, policy.processor, WorldConfig(), Probes(n=4, captions_n=5, holdout_kinds=HELD))
    expected = {"in_prior_accuracy", "counter_prior_accuracy", "gap", "existence_accuracy", "count_accuracy"}
    expected |= {"choice_accuracy", "pope_f1", "pope_yes_ratio", "chair_s", "chair_i", "heldout_phrasing_accuracy"}
    assert set(out) == expected | {"heldout_kinds_accuracy", "kl_to_base"}
    in_prior, counter, existence, count, choice, phrased, held = seen
    assert [r["group"] for r in in_prior] == ["in_prior"] * 4 and [r["group"] for r in counter] == ["counter_prior"] * 4
    assert not any(r["query_kind"] in HELD for r in in_prior + counter)  # the eval set covers the trained kinds
    assert {r["query_kind"] for r in held} <= set(HELD) and {r["group"] for r in held} == {"counter_prior"}
    assert [r["id"] for r in phrased] == [r["id"] for r in counter]
    assert all(r["question"].split()[:3] != ["What", "color", "is"] for r in phrased)
    assert {r["family"] for r in existence + count + choice} == {"existence", "count", "choice"}
    assert out["kl_to_base"] == pytest.approx(0.0, abs=1e-6)  # fresh adapters


def test_refilter_keeps_what_mining_with_that_filter_keeps(tiny_root, tmp_path):
    from mbpo_lit.mining import MineConfig, mine_pairs
    from mbpo_lit.mining.refilter import refilter
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    path = str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    base = MineConfig(
        out=str(tmp_path / "all"), model=path, source=WorldSource(["train"], 8), n=8, steps=1, iig_filter="none"
    )
    mine_pairs(base, progress=False)
    high = dataclasses.replace(base, iig_filter="high", out=str(tmp_path / "direct"))
    direct = load_from_disk(str(mine_pairs(high, progress=False)))
    again = load_from_disk(str(refilter(base.out, dataclasses.replace(high, out=str(tmp_path / "re")))))
    everything = load_from_disk(str(tmp_path / "all" / "dataset"))
    assert 0 < len(again) < len(everything) and again["id"] == direct["id"]
    assert again["rejected"] == direct["rejected"]
    summary = json.loads((tmp_path / "re" / "summary.json").read_text())
    assert summary["pairs"] == len(direct) and summary["refiltered_from"] == base.out
    with pytest.raises(SettingsError, match="other settings than the pair filter's \\(\\['epsilon'\\]\\)"):
        refilter(base.out, dataclasses.replace(high, epsilon=8.0, out=str(tmp_path / "bad")))
