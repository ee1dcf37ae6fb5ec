"""Shared prompt prefix (vlm/shared_prefix.py): the same numbers as one row per completion, for every architecture."""

import contextlib
import dataclasses
import functools
import json
import shutil

import pytest
import torch

from mbpo_lit.core.grpo import grpo_loss
from mbpo_lit.experiments.bench import count_vision_calls
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.train.module import MBPOModule
from mbpo_lit.train.settings import Loss, Optimization, Rewards, Sampling
from mbpo_lit.vlm import sampling
from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.chat import encode_prompts, vision_token_ids
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, reference_mode, trainable_parameters
from mbpo_lit.vlm.sampling import SamplingRule

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


# ------------------------------------------------------------------------------------------------------------
# The layouts compared where a wrong shared prefix would show in training: after an optimizer step (ratios away
# from 1, clipping active), over a batch of mixed prompt lengths and image sizes, under gradient checkpointing
# in 4-bit, and in the rollout's draws.


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
    opt = m.configure_optimizers()
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
    m._log_step = lambda out, scored, mask: parts.append(out)
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
    assert m.model.get_base_model().is_gradient_checkpointing
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
