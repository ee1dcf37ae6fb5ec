"""Shared prompt prefix (vlm/shared_prefix.py), its log-prob passes: the same log-probs, losses and gradients as
one row per completion, for every architecture (after an optimizer step, over mixed prompt lengths and image
sizes, under gradient checkpointing). Its sampling: tests/test_prefix_sampling.py."""

import contextlib
import dataclasses
import functools
import warnings

import pytest
import torch

from mbpo_lit.core.grpo import grpo_loss
from mbpo_lit.experiments.bench import count_vision_calls
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.train.module import MBPOModule
from mbpo_lit.train.settings import Loss, Optimization, Rewards, Sampling
from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, reference_mode, trainable_parameters

WORLD = WorldConfig(image_size=56)


def records(n=3):
    recs = build_records(WORLD, "train", n)
    pairs = [dict(r, rejected=next(c for c in WORLD.colors if c != r["answer"])) for r in recs]
    return recs, pairs


def trained_module(
    path,
    quantization="none",
    gc=False,
    sampling: dict | None = None,
    loss: dict | None = None,
    optim: dict | None = None,
) -> MBPOModule:
    """A module whose adapters are not zero (fresh LoRA B is 0, which would hide an adapter bug)."""
    cfg = ModelConfig(
        str(path),
        precision="fp32",
        quantization=quantization,
        device="cpu",
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        gradient_checkpointing=gc,
    )
    m = MBPOModule(
        cfg,
        Sampling(**({"group_size": 3, "max_new_tokens": 4} | (sampling or {}))),
        Loss(**({"beta": 0.04} | (loss or {}))),
        Rewards(vocabulary=WORLD.colors),
        Optimization(**(optim or {})),
        sample_table_every=0,
    )
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
    out = grpo_loss(
        logp,
        logp.detach(),
        scored.advantages,
        mask,
        ref,
        beta=loss.beta,
        eps_low=loss.eps_low,
        eps_high=loss.eps_high,
        aggregation=loss.aggregation,
        max_tokens=m.sampling.max_new_tokens,
    )
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


def test_a_trainable_vision_tower_is_refused_with_the_parameter_named(tiny_root):
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    m = trained_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    name, p = next((n, p) for n, p in m.model.named_parameters() if ".visual." in n)
    p.requires_grad_(True)
    with pytest.raises(ValueError, match=f"{name}.*share_prefix=False"):
        prefix.check_frozen_vision(m.model, m.policy.arch)


# ------------------------------------------------------------------------------------------------------------
# The layouts compared where a wrong shared prefix would show in training: after an optimizer step (ratios away
# from 1, clipping active), over a batch of mixed prompt lengths and image sizes, under gradient checkpointing
# in 4-bit (the rollout's draws: tests/test_prefix_sampling.py).


def seeded_module(path, quantization="none", **kw) -> MBPOModule:
    """`trained_module` with LoRA A (drawn from the global generator) fixed too: the same numbers whatever ran
    before."""
    torch.manual_seed(0)
    return trained_module(path, quantization, **kw)


def mixed_records():
    """Online records and offline pairs whose prompts differ in length: a long question, and images whose
    Qwen-VL grids differ in size and shape (4, 2, 8 and 3 image tokens; LLaVA crops all to 56 x 56)."""
    recs, pairs = records(4)
    sizes = [None, (112, 84), (28, 84), (168, 56)]  # (width, height); None keeps the world's 56 x 56
    recs = [dict(r, image=r["image"].resize(s) if s else r["image"]) for r, s in zip(recs, sizes)]
    recs[0]["question"] = (
        "Look at every shape in the picture, one after the other, before you answer. " + recs[0]["question"]
    )
    recs[3]["question"] = "In this picture: " + recs[3]["question"]
    pairs = [dict(p, image=r["image"], question=r["question"]) for p, r in zip(pairs, recs)]
    return recs, pairs


def layouts(m: MBPOModule, batch: dict, seed: int = 0):
    """One rollout of `batch`, laid out both ways: (shared prefix, one row per completion).

    The advantages are replaced by a fixed pattern, non-zero on every row: the tiny models' rewards tie
    within a group, whose advantages would be 0 and keep the online rows out of the surrogate.
    """
    torch.manual_seed(seed)
    fast = m.score(batch)
    assert fast.prompts is not None
    n = len(fast.ids)
    fast.advantages = torch.tensor([(-1.0) ** i * (0.5 + i / n) for i in range(n)])
    return fast, dataclasses.replace(fast, prompts=None)


def assert_all_close(got, expected, atol=1e-5, rtol=1e-4):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


def training_step(m: MBPOModule, scored, weights: dict):
    """`MBPOModule.training_step` on a fixed rollout, without a Trainer, from `weights` and a fresh AdamW.

    Returns (the last pass's LossParts, [gradients of each of the mu passes], adapter weights after the step):
    the rollout is `scored`, the optimizer steps are the module's AdamW steps, gradient clipping is off (it
    needs a Trainer and would only rescale the gradients).
    """
    params = trainable_parameters(m.model)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    opt = m.configure_optimizers()["optimizer"]
    # Adam's first step is lr * g / (sqrt(g^2) + eps), about lr * sign(g): with the default eps (1e-8) the
    # layouts' float rounding (1e-8) on gradients near 0 would become weight differences of size lr. A larger
    # eps keeps the step a smooth function of the gradient, so equal gradients give equal steps.
    opt.param_groups[0]["eps"] = 1e-3
    grads, parts = [], []
    step = opt.step

    def recording_step(*args, **kwargs):
        grads.append([p.grad.detach().clone() for p in params.values()])
        return step(*args, **kwargs)

    opt.step = recording_step
    m.score = lambda batch: scored
    m.optimizers = lambda: opt
    m.manual_backward = lambda loss: loss.backward()
    m.clip_gradients = lambda *args, **kwargs: None
    m._log_step = lambda out, *rest: parts.append(out)
    m.train()
    loss = m.training_step({}, 0)
    assert len(grads) == m.loss.mu and len(parts) == 1 and torch.equal(loss, parts[0].loss.detach())
    return parts[0], grads, [p.detach().clone() for p in params.values()]


def check_training_step(m: MBPOModule, batch: dict):
    """Both layouts through mu = 2 passes with an AdamW step between: same losses, gradients and weights."""
    fast, slow = layouts(m, batch)
    start = {n: p.detach().clone() for n, p in trainable_parameters(m.model).items()}
    out_fast, grads_fast, after_fast = training_step(m, fast, start)
    out_slow, grads_slow, after_slow = training_step(m, slow, start)
    # The second pass is off-policy: the step moved the ratios far enough from 1 to clip, and the loss is the
    # clipped surrogate plus the KL, not the KL alone.
    assert out_slow.clip_fraction > 0 and out_slow.policy_loss.abs() > 1e-4 and out_slow.kl > 0 and m.loss.beta > 0
    torch.testing.assert_close(out_fast.loss, out_slow.loss, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_fast.clip_fraction, out_slow.clip_fraction)
    for g_fast, g_slow in zip(grads_fast, grads_slow):  # pass 1 (on-policy), then pass 2 (after the step)
        assert any(g.abs().sum() > 0 for g in g_slow)
        assert_all_close(g_fast, g_slow)
    assert_all_close(after_fast, after_slow)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_shared_prefix_after_an_optimizer_step_gives_the_losses_and_gradients_of_one_row_per_completion(
    tiny_path, quantization
):
    m = seeded_module(tiny_path, quantization, loss={"mu": 2}, optim={"lr": 0.05})
    recs, pairs = records()
    check_training_step(m, {"online": recs[:2], "offline": pairs[:1]})


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_shared_prefix_over_mixed_prompt_lengths_and_image_sizes_gives_the_numbers_of_one_row_per_completion(
    tiny_path, quantization
):
    m = seeded_module(tiny_path, quantization)
    recs, pairs = mixed_records()
    fast, slow = layouts(m, {"online": recs[:2], "offline": pairs[2:]})
    lengths = fast.prompts.batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) >= 3  # prompts of different lengths: left padding varies
    loss_fast, logp_fast, grads_fast = loss_and_grads(m, fast)
    loss_slow, logp_slow, grads_slow = loss_and_grads(m, slow)
    assert logp_fast.shape == logp_slow.shape and (logp_slow != 0).any()
    torch.testing.assert_close(logp_fast, logp_slow, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(loss_fast, loss_slow, atol=1e-6, rtol=1e-4)
    assert any(g.abs().sum() > 0 for g in grads_slow)
    assert_all_close(grads_fast, grads_slow)


def test_gradient_checkpointing_in_4bit_after_an_optimizer_step_gives_the_numbers_of_one_row_per_completion(tiny_path):
    m = seeded_module(tiny_path, "4bit", gc=True, loss={"mu": 2}, optim={"lr": 0.05})
    assert any(getattr(layer, "gradient_checkpointing", False) for layer in m.model.modules())
    recs, pairs = records()
    check_training_step(m, {"online": recs[:2], "offline": pairs[:1]})


@contextlib.contextmanager
def attention_inputs(m: MBPOModule):
    """Record (rows, tokens) of every input to the first decoder layer's attention, the backward's recomputes
    included: a checkpointed layer replays its forward there, and hooks inside the layer fire again."""
    shapes = []
    attn = prefix._decoder_layers(m.model)[0].self_attn
    handle = attn.register_forward_hook(
        lambda module, args, kwargs, out: shapes.append(tuple(kwargs["hidden_states"].shape[:2])), with_kwargs=True
    )
    try:
        yield shapes
    finally:
        handle.remove()


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_gradient_checkpointing_prefills_each_prompt_once_with_the_numbers_of_one_row_per_completion(
    tiny_path, quantization
):
    """Under gradient checkpointing the policy pass still prefills each prompt once (and its checkpointed
    layers recompute in the backward); its loss and LoRA gradients are those of one row per completion under
    checkpointing, and of the shared prefix without it. One vision-tower call per step, one image per prompt."""
    m = seeded_module(tiny_path, quantization, gc=True).train()
    plain = seeded_module(tiny_path, quantization).train()  # the same weights, no checkpointing
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked at every forward: no deprecation warning from transformers either
        assert prefix.checkpointing(m.model) and not prefix.checkpointing(plain.model)
    recs, pairs = records()
    vision = count_vision_calls(m.model, m.policy.arch.model_type)  # the benchmark's counter
    fast, slow = layouts(m, {"online": recs[:2], "offline": pairs[:1]})
    with attention_inputs(m) as shapes:
        loss_fast, logp_fast, grads_fast = loss_and_grads(m, fast)
    assert vision == {"calls": 1, "images": 3}  # 3 distinct prompts, each image once: rollout, policy, reference
    n_prompts, prompt_len = fast.prompts.batch["input_ids"].shape
    rows, width = logp_fast.shape
    # The reference pass (no gradients: no recompute), then the policy pass and the backward's recompute of it:
    # prompts over the prompt, completion rows over the completion tokens but the last; never rows x prompt.
    passes = [(n_prompts, prompt_len), (rows, width - 1)]
    assert n_prompts == 3 and rows == 8 and sorted(shapes) == sorted(passes * 3)
    with attention_inputs(m) as shapes:
        loss_slow, logp_slow, grads_slow = loss_and_grads(m, slow)
    assert all(r == rows and t > prompt_len for r, t in shapes)  # one row per completion, prompt included
    loss_plain, logp_plain, grads_plain = loss_and_grads(plain, dataclasses.replace(fast, prompts=None))
    loss_plain_fast, _, grads_plain_fast = loss_and_grads(plain, fast)
    assert any(g.abs().sum() > 0 for g in grads_slow)
    for loss, logp, grads in [
        (loss_slow, logp_slow, grads_slow),
        (loss_plain, logp_plain, grads_plain),
        (loss_plain_fast, None, grads_plain_fast),
    ]:
        if logp is not None:
            torch.testing.assert_close(logp_fast, logp, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(loss_fast, loss, atol=1e-6, rtol=1e-4)
        assert_all_close(grads_fast, grads)


def test_a_reentrant_checkpointing_function_falls_back_to_one_row_per_completion(tiny_root):
    """Reentrant checkpointing passes no gradient to the cache's keys and values, which a layer reads from
    outside its arguments: the policy pass then lays out one row per completion (same numbers)."""
    m = seeded_module(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root), gc=True).train()
    recs, pairs = records(2)
    fast, slow = layouts(m, {"online": recs[:1], "offline": pairs[1:]})
    expected, _ = m.logprobs(slow)
    assert prefix._shareable(m.model)
    for layer in prefix._decoder_layers(m.model):
        layer._gradient_checkpointing_func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=True)
    assert not prefix._shareable(m.model)
    with attention_inputs(m) as shapes:
        logp, _ = m.logprobs(fast)
    assert len(shapes) == 1 and shapes[0][0] == len(fast.ids)
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=1e-4)
