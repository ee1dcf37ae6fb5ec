"""What the miner skips or computes another way, for speed, and that each gives the values of the long way: patch
embeddings as a matrix product, windowed vision attention in one batched call, the answers and IIG side without
visual evidence once per distinct prompt, the chosen answer's IIG from the clean pass, and `logp_after` from PGD's
own 8-bit reading."""

import pytest
import torch

from mbpo_lit.mining import MineConfig, Miner
from mbpo_lit.mining import prior as prior_module
from mbpo_lit.mining.fast_vision import (
    batched_window_attention,
    fast_vision,
    is_patch_conv,
    is_window_attention,
    matmul_patch_embeddings,
)
from mbpo_lit.mining.prior import ImageFree
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world_source import WorldSource
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
from mbpo_lit.vlm.codec import to_raw
from mbpo_lit.vlm.iig import image_information_gain
from mbpo_lit.vlm.logprobs import completion_scores
from mbpo_lit.vlm.policy import ModelConfig, load_policy


@pytest.fixture(scope="module")
def qwen(tiny_root):
    path = str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    return load_policy(ModelConfig(path, precision="fp32", quantization="none", lora=None, device="cpu"))


@pytest.fixture(scope="module")
def biased_model():
    """The embedded default's biased base model, reused from `runs/base/` (or built, as `test_mine.py` says)."""
    from mbpo_lit.testbed.base_model import WarmStartConfig, build_base_model

    return str(build_base_model(WarmStartConfig(), progress=False))


@pytest.fixture(scope="module")
def biased(biased_model):
    return load_policy(ModelConfig(biased_model, precision="fp32", quantization="none", lora=None))


def scores_and_pixel_gradient(policy, photos):
    """The answers' log-likelihood and its gradient in the pixels, on the tiny Qwen2.5-VL."""
    prompts = encode_prompts(policy.processor, ["What is in the picture?"] * len(photos), photos)
    ids = answer_token_ids(policy.processor, ["a zebra crossing"] * len(photos))
    batch, mask = append_completions(prompts, ids, policy.processor.tokenizer.pad_token_id)
    pixels = batch["pixel_values"].clone().requires_grad_(True)
    logp = completion_scores(policy.model, dict(batch, pixel_values=pixels), mask)[0].sum(1)
    (grad,) = torch.autograd.grad(logp.sum(), pixels)
    return logp.detach(), grad


def test_patch_embeddings_as_a_matrix_product_equal_the_convolution_and_are_undone_after(qwen, photos):
    """Forward values and pixel gradients through the whole model agree to float rounding; the convolution is back
    after (no instance `forward` left), and a convolution that sees more than one patch per input keeps its own."""
    qwen.model.requires_grad_(False)
    conv_logp, conv_grad = scores_and_pixel_gradient(qwen, photos)
    with matmul_patch_embeddings(qwen.model) as swapped:
        assert swapped == 1
        mm_logp, mm_grad = scores_and_pixel_gradient(qwen, photos)
    assert torch.allclose(mm_logp, conv_logp, atol=1e-4) and torch.allclose(mm_grad, conv_grad, atol=1e-5)
    assert conv_grad.abs().max() > 1e-3  # the gradient is there to compare
    convs = [m for m in qwen.model.modules() if is_patch_conv(m)]
    assert convs and all("forward" not in vars(m) for m in convs)
    wide = torch.nn.Conv2d(3, 8, kernel_size=4, stride=4)  # a whole image, many patches per input
    x = torch.randn(2, 3, 16, 16)
    with matmul_patch_embeddings(wide):
        assert torch.allclose(wide(x), torch.nn.functional.conv2d(x, wide.weight, wide.bias, stride=4), atol=1e-6)
    one = torch.randn(5, 3, 4, 4)  # one patch per input, with a bias: the product path
    with matmul_patch_embeddings(wide):
        assert torch.allclose(wide(one), torch.nn.functional.conv2d(one, wide.weight, wide.bias, stride=4), atol=1e-5)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen2_vl"])
def test_windowed_attention_batched_equals_the_models_loop_and_is_undone_after(arch, tiny_root, photos, monkeypatch):
    """Photographs of one size: every window has one length and the model's own attention loop never runs, yet
    forward values and pixel gradients through the whole model agree to float rounding. Photographs of mixed sizes
    keep the model's loop. On the attention itself: six windows of one length equal the loop, values and
    gradients; windows all of different lengths keep it. Both Qwen-VL generations; no instance `forward` is left
    after."""
    path = str(ensure_tiny_checkpoint(arch, tiny_root))
    policy = load_policy(ModelConfig(path, precision="fp32", quantization="none", lora=None, device="cpu"))
    policy.model.requires_grad_(False)
    attns = [m for m in policy.model.modules() if is_window_attention(m)]
    assert attns
    own = type(attns[0]).forward
    looped: list[int] = []
    monkeypatch.setattr(type(attns[0]), "forward", lambda *a, **k: looped.append(1) or own(*a, **k))
    square = [p.resize((112, 112)) for p in photos]
    for images, batched in [(square, True), (photos, False)]:
        loop_logp, loop_grad = scores_and_pixel_gradient(policy, images)
        looped.clear()
        with fast_vision(policy.model) as (_, swapped):
            assert swapped == len(attns)
            fast_logp, fast_grad = scores_and_pixel_gradient(policy, images)
        assert (not looped) == batched, (arch, batched, len(looped))
        assert torch.allclose(fast_logp, loop_logp, atol=1e-4) and torch.allclose(fast_grad, loop_grad, atol=1e-5)
        assert loop_grad.abs().max() > 1e-3
    assert all("forward" not in vars(m) for m in attns)
    attn, dim = attns[0], attns[0].qkv.in_features  # several windows of one length, and windows all different
    for lengths, batched in [([5] * 6, True), ([3, 5], False)]:
        cu = torch.tensor([0, *lengths]).cumsum(0).to(torch.int32)
        hidden = torch.randn(sum(lengths), dim, requires_grad=True)
        angles = torch.randn(sum(lengths), dim // attn.num_heads)
        rotary = (angles.cos(), angles.sin())
        want = own(attn, hidden, cu, rotary)
        (want_grad,) = torch.autograd.grad(want.square().sum(), hidden)
        looped.clear()
        got = batched_window_attention(attn, hidden, cu, rotary)
        (got_grad,) = torch.autograd.grad(got.square().sum(), hidden)
        assert (not looped) == batched and torch.allclose(got, want, atol=1e-5)
        assert torch.allclose(got_grad, want_grad, atol=1e-4)


def test_image_free_answers_and_log_likelihoods_are_computed_once_per_distinct_prompt(qwen, photos, monkeypatch):
    """Grey-image and no-image answers equal `image_free_answers` record by record, and IIG's image-free side
    equals `image_information_gain`'s, for both baselines; each distinct (question, image size) is decoded once
    and each distinct (question, answer[, size]) scored once, across calls."""
    questions = ["What is in the picture?", "Is there a cat?"] * len(photos)
    images = [p for p in photos for _ in range(2)]  # every photo with both questions
    answers = ["a cat", "yes"] * len(photos)
    decoded: list[int] = []
    decode = prior_module.image_free_answers
    monkeypatch.setattr(
        prior_module,
        "image_free_answers",
        lambda m, p, qs, *a, **k: decoded.append(len(qs)) or decode(m, p, qs, *a, **k),
    )
    free = ImageFree(qwen.model, qwen.processor, 8)
    grey, blind = free.answers(questions, images)
    assert (grey, blind) == decode(qwen.model, qwen.processor, questions, images, 8)
    distinct = len({(q, im.size) for q, im in zip(questions, images)})
    assert distinct < len(questions) and decoded == [distinct]
    assert free.answers(questions[:2], images[:2]) == (grey[:2], blind[:2]) and decoded == [distinct]
    for baseline in ("none", "neutral"):
        free = ImageFree(qwen.model, qwen.processor, 8, baseline)
        reference = image_information_gain(qwen.model, qwen.processor, questions, answers, images, baseline)
        got = free.baseline_logp(questions, answers, images, batch_size=3)
        assert torch.allclose(got, reference.logp_baseline, atol=1e-4), baseline
        want = len(set(zip(questions, answers))) if baseline == "none" else distinct
        assert len(free.logp_seen) == want < len(questions)


@pytest.mark.parametrize("judge_margin", [0.5, None])
def test_mined_iig_and_logp_after_equal_the_passes_they_replace(judge_margin, biased, monkeypatch):
    """On the default config's records (the clean image is the processor's): each row's IIG of the chosen and of
    the rejected answer is `image_information_gain`'s, and `logp_after` (read by PGD on a sample's final 8-bit
    image where it read that image) is a fresh pass on the saved picture. After the attack, one pass scores
    exactly the samples PGD did not read there: with every step read on 8 bits (`judge_margin` None), only
    samples whose attack failed."""
    source = WorldSource(["train"], 16)
    records = source.load()[0]
    cfg = MineConfig(model="biased", source=source, n=16, batch_size=16, iig_filter="none", judge_margin=judge_margin)
    miner = Miner(biased.model, biased.processor, cfg, source.vocabulary)
    rescored: list[tuple[int, int]] = []  # (rows scored, samples PGD did not read) per pass after the attack
    unmeasured = Miner.unmeasured

    def counting(self, score, perturbed, measured):
        def counted(images, index):
            rescored.append((len(index), len(perturbed) - len(measured)))
            return score(images, index)

        return unmeasured(self, counted, perturbed, measured)

    monkeypatch.setattr(Miner, "unmeasured", counting)
    rows = miner.mine(records, 0)
    qs, images = [r["question"] for r in records], [r["image"] for r in records]
    chosen = image_information_gain(biased.model, biased.processor, qs, [r["answer"] for r in records], images)
    rejected = [r["rejected"][0]["content"][0]["text"] for r in rows]
    other = image_information_gain(biased.model, biased.processor, qs, rejected, images)
    for key, want in [("iig_sum", chosen.sum), ("iig_mean", chosen.mean), ("iig_rejected_mean", other.mean)]:
        assert torch.allclose(torch.tensor([r[key] for r in rows]), want, atol=1e-4), key
    assert sum(r["kept"] for r in rows) >= 8 and len(rescored) <= 1
    assert all(scored == unread for scored, unread in rescored)
    if judge_margin is None:
        assert sum(scored for scored, _ in rescored) <= sum(not r["kept"] for r in rows)
    prompts = encode_prompts(biased.processor, qs, images)
    saved = torch.stack([to_raw(r["perturbed_image"]) for r in rows])
    fresh = miner.loglik(prompts, answer_token_ids(biased.processor, [r["answer"] for r in records]))(saved)
    assert torch.allclose(torch.tensor([r["logp_after"] for r in rows]), fresh.detach(), atol=1e-4)


def test_the_margin_judges_both_ways_and_only_the_samples_within_it_are_read_on_8_bits(biased, monkeypatch):
    """PGD's objective reads a sample's 8-bit image with a teacher-forced pass only when its differentiable pass
    leaves the answer open: the ground truth leading every position by less than `judge_margin`, and no other
    token leading any position by as much. A sample whose ground truth leads is correct with no pass; one where
    another token leads is decoded straight away (its answer is the 8-bit greedy one all the same). Only the samples
    read keep an 8-bit log-likelihood, and a reading of an earlier image is dropped once a sample is judged by the
    margin."""
    source = WorldSource(["train"], 32)
    records = source.load()[0]
    cfg = MineConfig(model="biased", source=source, n=32, judge_margin=None)
    miner = Miner(biased.model, biased.processor, cfg, source.vocabulary)
    read: list[int] = []
    scorer = Miner.scorer

    def counting(self, *args, **kwargs):
        score = scorer(self, *args, **kwargs)
        return lambda images, index=None: (
            read.extend([] if torch.is_grad_enabled() else index.tolist()) or score(images, index)
        )

    monkeypatch.setattr(Miner, "scorer", counting)
    qs, images = [r["question"] for r in records], [r["image"] for r in records]
    prompts = encode_prompts(biased.processor, qs, images)
    ids = answer_token_ids(biased.processor, [r["answer"] for r in records])
    raw = torch.stack(miner.codec.raw_images(prompts))  # 8-bit already: the rounded image is the image
    objective = miner.objective(prompts, ids, records, raw)
    everyone = torch.arange(len(records))
    objective(raw.clone().requires_grad_(True), everyone)  # judge_margin None: every sample read on 8 bits
    assert sorted(objective.logps) == sorted(read) == everyone.tolist()
    scores = miner.scorer(prompts, ids)(raw, everyone)
    lead = float(scores.margin.abs().median())  # samples on both sides of the margin, and within it
    right, wrong = scores.greedy & (scores.margin >= lead), scores.margin <= -lead
    within = [i for i in everyone.tolist() if not right[i] and not wrong[i]]
    assert right.any() and wrong.any() and within, (lead, scores.margin)
    miner.cfg.judge_margin, read[:] = lead, []
    objective(raw.clone().requires_grad_(True), everyone)
    assert sorted(read) == sorted(objective.logps) == within
    decoded = miner.answer(prompts, raw)
    assert all(objective.answers[i] == decoded[i] for i in wrong.nonzero().squeeze(1).tolist())
