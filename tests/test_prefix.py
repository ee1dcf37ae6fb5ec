"""Shared prompt prefix (prefix.py): the same numbers as one row per completion, for every architecture."""

import dataclasses

import pytest
import torch

from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.chat import encode_prompts, vision_token_ids
from mbpo_lit.core.grpo import grpo_loss
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, reference_mode, trainable_parameters
from mbpo_lit.train.module import MBPOModule
from mbpo_lit.train.settings import Loss, Rewards, Sampling
from mbpo_lit.testbed.world import WorldConfig, build_records

WORLD = WorldConfig(image_size=56)


def records(n=3):
    recs = build_records(WORLD, "train", n)
    pairs = [dict(r, rejected=next(c for c in WORLD.colors if c != r["answer"])) for r in recs]
    return recs, pairs


def trained_module(path, quantization="none", **kw) -> MBPOModule:
    """A module whose adapters are not zero (fresh LoRA B is 0, which would hide an adapter bug)."""
    cfg = ModelConfig(str(path), precision="fp32", quantization=quantization, device="cpu",
                      lora=LoraSettings(r=4, alpha=8, dropout=0.0), gradient_checkpointing=kw.pop("gc", False))
    m = MBPOModule(cfg, Sampling(group_size=3, max_new_tokens=4), Loss(beta=0.04), Rewards(vocabulary=WORLD.colors),
                   sample_table_every=0, **kw)
    m.configure_model()
    gen = torch.Generator().manual_seed(0)
    for name, p in m.model.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    return m


def loss_and_grads(m: MBPOModule, scored):
    with reference_mode(m.model):
        ref, _ = m.logprobs(scored)
    logp, mask = m.logprobs(scored)
    loss = m.loss
    out = grpo_loss(logp, logp.detach(), scored.advantages, mask, ref, beta=loss.beta, eps_low=loss.eps_low,
                    eps_high=loss.eps_high, aggregation=loss.aggregation, max_tokens=m.sampling.max_new_tokens)
    params = list(trainable_parameters(m.model).values())
    return out.loss, logp, torch.autograd.grad(out.loss, params)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_shared_prefix_gives_the_loss_and_gradients_of_one_row_per_completion(tiny_path, quantization):
    m = trained_module(tiny_path, quantization)
    recs, pairs = records()
    torch.manual_seed(0)
    fast = m.score({"online": recs[:2], "offline": pairs[:2]})
    assert fast.prompts is not None and len(fast.prompts) == 4 and fast.repeats == [3, 3, 2, 2]
    slow = dataclasses.replace(fast, prompts=None)  # same rollout, straightforward layout
    loss_fast, logp_fast, grads_fast = loss_and_grads(m, fast)
    loss_slow, logp_slow, grads_slow = loss_and_grads(m, slow)
    assert logp_fast.shape == logp_slow.shape and (logp_slow != 0).any()
    torch.testing.assert_close(logp_fast, logp_slow, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss_fast, loss_slow, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads_slow)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_keeps_one_row_per_completion_with_the_same_numbers(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root), gc=True)
    m.train()
    recs, pairs = records()
    fast = m.score({"online": recs[:2], "offline": pairs[:1]})
    loss_fast, _, grads_fast = loss_and_grads(m, fast)
    loss_slow, _, grads_slow = loss_and_grads(m, dataclasses.replace(fast, prompts=None))
    torch.testing.assert_close(loss_fast, loss_slow, atol=1e-6, rtol=1e-4)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_greedy_sampling_from_one_prefill_matches_generate(tiny_path):
    m = trained_module(tiny_path)
    model, p = m.model.eval(), m.processor
    recs, _ = records()
    questions, images = [r["question"] for r in recs], [r["image"] for r in recs]
    enc = encode_prompts(p, questions, images)
    ids = model.generate(**enc, do_sample=False, max_new_tokens=5, suppress_tokens=vision_token_ids(p))
    expected = m._cut(ids[:, enc["input_ids"].shape[1]:])
    prompts = prefix.encode(model, p, questions, images)
    got = prefix.sample(model, prompts, 2, 5, p.tokenizer.eos_token_id, temperature=0, suppress=vision_token_ids(p))
    assert got == [c for c in expected for _ in range(2)]


def test_sampling_never_draws_suppressed_tokens_and_stops_at_the_end_of_turn(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    model, p = m.model.eval(), m.processor
    recs, _ = records(2)
    prompts = prefix.encode(model, p, [r["question"] for r in recs], [r["image"] for r in recs])
    eos = p.tokenizer.eos_token_id
    greedy = prefix.sample(model, prompts, 1, 6, eos, temperature=0)
    banned = sorted({c[0] for c in greedy})
    sampled = prefix.sample(model, prompts, 4, 6, eos, temperature=1.0, suppress=banned,
                            generator=torch.Generator().manual_seed(0))
    assert len(sampled) == 8
    for c in sampled:
        assert not set(c) & set(banned)
        assert (c[-1] == eos and eos not in c[:-1]) or (len(c) == 6 and eos not in c)


def test_nucleus_draw_keeps_only_the_top_p_mass():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.05, 0.05]])).expand(4000, -1)
    gen = torch.Generator().manual_seed(0)
    assert set(prefix._draw(logits, 1.0, 0.5, gen).tolist()) == {0}  # 0.6 alone reaches 0.5
    top = prefix._draw(logits, 1.0, 0.85, gen)
    assert set(top.tolist()) == {0, 1} and abs((top == 0).float().mean().item() - 2 / 3) < 0.03
    assert set(prefix._draw(logits, 1.0, 1.0, gen).tolist()) == {0, 1, 2, 3}
    assert prefix._draw(logits, 0.0, 1.0, gen).eq(0).all()


def test_a_trainable_vision_tower_is_refused_with_the_parameter_named(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    name, p = next((n, p) for n, p in m.model.named_parameters() if ".visual." in n)
    p.requires_grad_(True)
    with pytest.raises(ValueError, match=f"{name}.*share_prefix=False"):
        prefix.check_frozen_vision(m.model, m.policy.arch)


def test_take_selects_and_repeats_prompts_with_their_image_features(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    recs, _ = records(3)
    prompts = prefix.encode(m.model, m.processor, [r["question"] for r in recs], [r["image"] for r in recs])
    sub = prompts.take([2, 0, 2])
    assert len(sub) == 3 and "pixel_values" not in sub.batch
    assert sub.features[0] is prompts.features[2] and sub.features[1] is prompts.features[0]
    assert torch.equal(sub.batch["input_ids"][1], prompts.batch["input_ids"][0])
