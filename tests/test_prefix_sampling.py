"""Shared prompt prefix (vlm/shared_prefix.py), its sampling: draws from one prefill per prompt are those of
`generate` on one row per completion, by the library's sampling rule (settings.Sampling), whatever the
checkpoint's generation config says. Its log-prob passes: tests/test_prefix.py."""

import dataclasses
import json
import shutil

import torch
from test_prefix import assert_all_close, layouts, mixed_records, records, seeded_module, trained_module

from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.train.module import MBPOModule
from mbpo_lit.vlm import sampling
from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.chat import encode_prompts, vision_token_ids
from mbpo_lit.vlm.policy import reference_mode
from mbpo_lit.vlm.sampling import SamplingRule


def rule(m: MBPOModule, **kw) -> SamplingRule:
    return dataclasses.replace(m.sampling_rule(), **kw)


def test_greedy_sampling_from_one_prefill_matches_generate(tiny_path):
    m = trained_module(tiny_path)
    model, p = m.model.eval(), m.processor
    recs, _ = records()
    questions, images = [r["question"] for r in recs], [r["image"] for r in recs]
    enc = encode_prompts(p, questions, images)
    ids = model.generate(**enc, do_sample=False, max_new_tokens=5, suppress_tokens=vision_token_ids(p))
    expected = m.sampling_rule().completions(ids[:, enc["input_ids"].shape[1] :])
    prompts = prefix.encode(model, p, questions, images)
    greedy = rule(m, temperature=0)
    assert prefix.sample(model, prompts, 2, 5, greedy) == [c for c in expected for _ in range(2)]
    assert sampling.generate(model, enc, 2, 5, greedy) == [c for c in expected for _ in range(2)]


def test_sampling_never_draws_suppressed_tokens_and_stops_at_the_end_of_turn(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    model, p = m.model.eval(), m.processor
    recs, _ = records(2)
    prompts = prefix.encode(model, p, [r["question"] for r in recs], [r["image"] for r in recs])
    eos = p.tokenizer.eos_token_id
    greedy = prefix.sample(model, prompts, 1, 6, rule(m, temperature=0, suppress=()))
    banned = sorted({c[0] for c in greedy})
    sampled = prefix.sample(
        model, prompts, 4, 6, rule(m, suppress=tuple(banned)), generator=torch.Generator().manual_seed(0)
    )
    assert len(sampled) == 8
    for c in sampled:
        assert not set(c) & set(banned)
        assert (c[-1] == eos and eos not in c[:-1]) or (len(c) == 6 and eos not in c)


def test_nucleus_and_top_k_draws_keep_only_their_tokens():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).expand(4000, -1)
    gen = torch.Generator().manual_seed(0)

    def draw(**kw):
        return SamplingRule(end_ids=(9,), pad_id=8, **kw).draw(logits, gen)

    assert set(draw(top_p=0.5).tolist()) == {0}  # 0.6 alone reaches 0.5
    top = draw(top_p=0.85)
    assert set(top.tolist()) == {0, 1} and abs((top == 0).float().mean().item() - 2 / 3) < 0.03
    assert set(draw().tolist()) == {0, 1, 2, 3}
    assert set(draw(top_k=2).tolist()) == {0, 1}
    assert set(draw(suppress=(0,), top_k=1).tolist()) == {1}
    assert draw(temperature=0.0).eq(0).all()
    cold = draw(temperature=0.5)  # p ~ p^2: 0.36 / (0.36 + 0.09 + 0.005) of draws are token 0
    assert abs((cold == 0).float().mean().item() - 0.36 / 0.455) < 0.03


def test_take_selects_and_repeats_prompts_with_their_image_features(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    recs, _ = records(3)
    prompts = prefix.encode(m.model, m.processor, [r["question"] for r in recs], [r["image"] for r in recs])
    sub = prompts.take([2, 0, 2])
    assert len(sub) == 3 and "pixel_values" not in sub.batch
    assert sub.features[0] is prompts.features[2] and sub.features[1] is prompts.features[0]
    assert torch.equal(sub.batch["input_ids"][1], prompts.batch["input_ids"][0])


def likely(m: MBPOModule, token: int, bias: float):
    """Raise `token`'s logit by `bias` wherever the model computes logits (generate and prefix.sample alike)."""

    def hook(module, args, logits):
        logits = logits.clone()
        logits[..., token] += bias
        return logits

    return m.model.get_output_embeddings().register_forward_hook(hook)


def rollouts(m: MBPOModule, recs: list[dict], seed: int):
    """The module's rollout of `recs` under `seed`, from one prefill per prompt and from `generate`."""
    prompts = prefix.encode(m.model, m.processor, [r["question"] for r in recs], [r["image"] for r in recs])
    torch.manual_seed(seed)
    _, shared, _ = m.rollout(recs, prompts)
    torch.manual_seed(seed)
    _, generated, _ = m.rollout(recs, None)
    return shared, generated


def test_rollout_samples_the_same_completions_from_one_prefill_as_generate(tiny_path):
    """Temperature 1, same seed: the same draws, row for row, including rows that ended early (which both
    keep drawing for, so the random stream stays aligned)."""
    m = seeded_module(tiny_path, sampling={"group_size": 4, "max_new_tokens": 6})
    assert m.sampling.temperature == 1.0 and m.sampling.top_p == 1.0
    eos = m.processor.tokenizer.eos_token_id
    recs, _ = mixed_records()
    with likely(m, eos, 3.0):  # some rows end within 6 tokens, at different steps, others do not
        for seed in range(2):
            shared, generated = rollouts(m, recs, seed)
            assert shared == generated
            lengths = {len(c) for c in shared}
            assert len(lengths) > 2 and any(c[-1] == eos for c in shared) and 6 in lengths


def test_rollout_keeps_sampled_pad_tokens_in_both_layouts(tiny_root):
    m = seeded_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root), sampling={"group_size": 2, "max_new_tokens": 3})
    pad = m.processor.tokenizer.pad_token_id
    assert pad != m.processor.tokenizer.eos_token_id
    recs, _ = records(2)
    with likely(m, pad, 30.0):  # every draw is the pad token: no row ends before max_new_tokens
        shared, generated = rollouts(m, recs, 0)
    assert shared == [[pad] * 3] * 4
    assert generated == shared


# ------------------------------------------------------------------------------------------------------------
# The sampling rule on a checkpoint whose generation config would change sampling (settings.Sampling): a strong
# repetition penalty, its own top-k / top-p / temperature, and two end ids, as Qwen2.5-VL-Instruct's has.


def with_generation_config(src, out, **fields):
    """A copy of checkpoint `src` at `out` whose generation_config.json has `fields` set."""
    shutil.copytree(src, out)
    path = out / "generation_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | fields))
    return out


def manual_logprobs(m: MBPOModule, scored, temperature: float) -> list[torch.Tensor]:
    """log softmax(logits / temperature) of each completion token, from one plain forward over prompt +
    completion per row (full logits, nothing of the library's log-prob code)."""
    seq, mask = m.sequence_batch(scored.records, scored.ids)
    logits = m.model(**seq).logits.float()
    out = []
    for i, ids in enumerate(scored.ids):
        positions = mask[i].nonzero().squeeze(1)  # where the completion's tokens sit; logits one step before
        lp = torch.log_softmax(logits[i, positions - 1] / temperature, dim=-1)
        out.append(lp.gather(1, torch.as_tensor(ids)[:, None]).squeeze(1))
    return out


def test_both_layouts_sample_by_the_library_rule_stop_at_every_end_id_and_score_at_the_temperature(tiny_root, tmp_path):
    src = ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)
    original = json.loads((src / "generation_config.json").read_text())
    eos, pad = original["eos_token_id"], original["pad_token_id"]  # <|im_end|>, and <|endoftext|> (also pad)
    ends = [eos, pad]
    knobs = with_generation_config(
        src,
        tmp_path / "knobs",
        eos_token_id=ends,
        do_sample=True,
        repetition_penalty=1.8,
        top_k=2,
        top_p=0.3,
        temperature=0.2,
        min_p=0.5,
        no_repeat_ngram_size=1,
    )
    plain = with_generation_config(src, tmp_path / "plain", eos_token_id=ends)
    sampling = {"group_size": 4, "max_new_tokens": 6, "temperature": 0.7}
    m = seeded_module(knobs, sampling=sampling)
    same_weights = seeded_module(plain, sampling=sampling)
    assert m.sampling_rule().end_ids == (eos, pad)
    recs, pairs = mixed_records()
    everything = []
    for module in (m, same_weights):
        with likely(module, eos, 2.0), likely(module, pad, 2.0):  # rows end at either id, or run to 6 tokens
            for seed in range(2):
                shared, generated = rollouts(module, recs, seed)
                assert shared == generated
                everything.append(shared)
    # The checkpoint's knobs apply in neither layout: the same draws as from the plain checkpoint.
    assert everything[:2] == everything[2:]
    completions = [c for rollout in everything for c in rollout]
    assert {c[-1] for c in completions} >= {eos, pad} and any(len(c) == 6 and c[-1] not in ends for c in completions)
    for c in completions:
        assert not set(c[:-1]) & set(ends) and (c[-1] in ends or len(c) == 6)
    # Every log-prob the loss uses (policy = old policy at mu = 1, reference) is log softmax(logits / T).
    with likely(m, eos, 2.0), likely(m, pad, 2.0):
        fast, slow = layouts(m, {"online": recs[:2], "offline": pairs[2:]})
    with torch.no_grad():
        expected = manual_logprobs(m, slow, 0.7)
        assert not torch.allclose(expected[0], manual_logprobs(m, slow, 1.0)[0])
        with reference_mode(m.model):
            expected_ref = manual_logprobs(m, slow, 0.7)
            refs = [m.logprobs(fast)[0], m.logprobs(slow)[0]]
        for logp in [m.logprobs(fast)[0], m.logprobs(slow)[0]]:
            assert_all_close([row[: len(e)] for row, e in zip(logp, expected)], expected)
        for ref in refs:
            assert_all_close([row[: len(e)] for row, e in zip(ref, expected_ref)], expected_ref)
        assert not torch.allclose(expected[0], expected_ref[0])
