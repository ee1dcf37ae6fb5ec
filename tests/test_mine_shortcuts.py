"""What the miner skips or computes another way, for speed, and that each gives the values of the long way: patch
embeddings as a matrix product, the answers and IIG side without visual evidence once per distinct prompt, the
chosen answer's IIG from the clean pass, and `logp_after` from PGD's own 8-bit reading."""

import pytest
import torch

from mbpo_lit.mining import MineConfig, Miner
from mbpo_lit.mining import prior as prior_module
from mbpo_lit.mining.patch_embed import is_patch_conv, matmul_patch_embeddings
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


def test_mined_iig_and_logp_after_equal_the_passes_they_replace(biased, monkeypatch):
    """On the default config's records (the clean image is the processor's): each row's IIG of the chosen and of
    the rejected answer is `image_information_gain`'s, and `logp_after` (read by PGD on each successful sample's
    final 8-bit image) is a fresh pass on the saved picture; only the samples PGD did not read there are scored
    again after the attack."""
    source = WorldSource(["train"], 16)
    records = source.load()[0]
    cfg = MineConfig(model="biased", source=source, n=16, batch_size=16, iig_filter="none")
    miner = Miner(biased.model, biased.processor, cfg, source.vocabulary)
    rescored: list[int] = []
    unmeasured = Miner.unmeasured
    monkeypatch.setattr(
        Miner, "unmeasured", lambda self, s, p, m: rescored.append(len(p) - len(m)) or unmeasured(self, s, p, m)
    )
    rows = miner.mine(records, 0)
    qs, images = [r["question"] for r in records], [r["image"] for r in records]
    chosen = image_information_gain(biased.model, biased.processor, qs, [r["answer"] for r in records], images)
    rejected = [r["rejected"][0]["content"][0]["text"] for r in rows]
    other = image_information_gain(biased.model, biased.processor, qs, rejected, images)
    for key, want in [("iig_sum", chosen.sum), ("iig_mean", chosen.mean), ("iig_rejected_mean", other.mean)]:
        assert torch.allclose(torch.tensor([r[key] for r in rows]), want, atol=1e-4), key
    # every successful sample was read on its final 8-bit image: only failed ones, if any, are scored again
    assert sum(r["kept"] for r in rows) >= 8 and len(rescored) == 1 and rescored[0] <= sum(not r["kept"] for r in rows)
    prompts = encode_prompts(biased.processor, qs, images)
    saved = torch.stack([to_raw(r["perturbed_image"]) for r in rows])
    fresh = miner.loglik(prompts, answer_token_ids(biased.processor, [r["answer"] for r in records]))(saved)
    assert torch.allclose(torch.tensor([r["logp_after"] for r in rows]), fresh.detach(), atol=1e-4)


def test_a_reading_of_an_earlier_image_is_never_kept_for_a_sample_judged_by_the_margin(biased):
    """PGD's objective keeps the 8-bit log-likelihood of each sample's last judged image only: a sample read on
    8 bits at one step and judged by the margin at the next has none (its image has moved since)."""
    source = WorldSource(["train"], 32)
    records = source.load()[0]
    cfg = MineConfig(model="biased", source=source, n=32, judge_margin=None)
    miner = Miner(biased.model, biased.processor, cfg, source.vocabulary)
    qs, images = [r["question"] for r in records], [r["image"] for r in records]
    prompts = encode_prompts(biased.processor, qs, images)
    ids = answer_token_ids(biased.processor, [r["answer"] for r in records])
    raw = torch.stack(miner.codec.raw_images(prompts))
    objective = miner.objective(prompts, ids, records, raw)
    everyone = torch.arange(len(records))
    objective(raw.clone().requires_grad_(True), everyone)  # judge_margin None: every sample read on 8 bits
    assert sorted(objective.logps) == everyone.tolist()
    miner.cfg.judge_margin = 0.0  # now every sample whose ground truth is the greedy answer is judged by the margin
    scores = miner.scorer(prompts, ids)(raw)
    objective(raw.clone().requires_grad_(True), everyone)
    by_margin = scores.greedy.tolist()
    assert any(by_margin) and not all(by_margin)
    assert sorted(objective.logps) == [i for i, g in enumerate(by_margin) if not g]
