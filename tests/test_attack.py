"""Pixel codec and perturbations: exact round trips, budgets respected, PGD lowers the objective and stops early."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig

from mbpo_lit.core.answers import is_correct
from mbpo_lit.core.attack import diffusion_noise, pgd, project, random_perturbation, to_uint8_grid
from mbpo_lit.mining import MineConfig, Miner
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.vlm.arch import load_processor
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts, take_rows
from mbpo_lit.vlm.codec import PixelCodec, pad_stack, to_pil, to_raw, unpad
from mbpo_lit.vlm.logprobs import completion_scores
from mbpo_lit.vlm.policy import ModelConfig, load_policy


def pictures(n=2, size=56, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(n)]


def test_codec_round_trips_exactly(tiny_path):
    processor = load_processor(tiny_path, AutoConfig.from_pretrained(tiny_path).model_type)
    codec = PixelCodec.from_processor(processor)
    batch = encode_prompts(processor, ["q a", "q b"], pictures())
    raw = codec.raw_images(batch)
    # The processor's own pixels, decoded and encoded again, are reproduced ...
    pixels, grid = codec.encode(raw)
    assert torch.allclose(pixels, batch["pixel_values"], atol=1e-5)
    if grid is not None:
        assert torch.equal(grid, batch["image_grid_thw"])
    # A same-size batch as one tensor (PGD's path) encodes to the same values as image by image.
    stacked, stacked_grid = codec.encode(torch.stack(raw))
    assert torch.equal(stacked, pixels) and (grid is None or torch.equal(stacked_grid, grid))
    # ... and raw images survive encode -> decode, and the resized image is the processor's input.
    x = [torch.rand_like(r) for r in raw]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(codec.decode(*codec.encode(x)), x))
    assert torch.allclose(to_raw(to_pil(raw[0])), raw[0], atol=1 / 255)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_projection_keeps_budget_and_range(norm):
    raw = torch.rand(3, 3, 8, 8)
    delta = project(raw, torch.randn_like(raw), 0.05, norm)
    if norm == "linf":
        assert delta.abs().max() <= 0.05 + 1e-7
    else:
        assert (delta.flatten(1).norm(dim=1) <= 0.05 + 1e-6).all()
    assert ((raw + delta) >= 0).all() and ((raw + delta) <= 1).all()


def test_pgd_minimises_a_simple_objective_within_budget():
    raw = torch.rand(2, 3, 8, 8)
    target = torch.zeros_like(raw)

    def objective(x, index):  # distance to black: PGD should darken every pixel by epsilon
        return ((x - target[index]) ** 2).flatten(1).sum(1), torch.ones(len(index), dtype=torch.bool)

    res = pgd(objective, raw, epsilon=0.1, step_size=0.05, steps=5, random_start=False, early_stop=False)
    assert (res.logp_after < res.logp_before).all()
    assert (res.images - raw).abs().max() <= 0.1 + 1e-6
    assert torch.allclose(res.images, (raw - 0.1).clamp(0, 1), atol=1e-6)


def test_pgd_runs_each_sample_only_for_the_steps_it_needs():
    """Early stop: a sample that succeeded leaves the batch; it is never evaluated again and keeps its image."""
    raw = torch.full((3, 3, 4, 4), 0.5)
    succeeds_at = torch.tensor([0, 2, 5])  # sample i is done once it has moved succeeds_at[i] steps
    calls: list[list[int]] = []

    def objective(x, index):
        calls.append(index.tolist())
        moved = ((raw[index] - x).mean((1, 2, 3)) / 0.01).round()  # steps taken (step 0.01, darkening)
        return x.flatten(1).sum(1), moved < succeeds_at[index]

    res = pgd(objective, raw, epsilon=0.1, step_size=0.01, steps=8, random_start=False)
    assert calls == [[0, 1, 2], [1, 2], [1, 2], [2], [2], [2]]  # 10 evaluations, not 3 x 6
    assert res.steps_used.tolist() == [0, 2, 5]
    assert torch.allclose((raw - res.images).mean((1, 2, 3)), torch.tensor([0.0, 0.02, 0.05]))


@pytest.mark.parametrize("method", ["uniform", "gaussian", "none"])
def test_noise_baselines_respect_the_budget(method):
    raw = torch.rand(2, 3, 16, 16)
    out = random_perturbation(method, raw, 8 / 255, generator=torch.Generator().manual_seed(0))
    assert (out - raw).abs().max() <= 8 / 255 + 1e-6 and out.min() >= 0 and out.max() <= 1
    assert (method == "none") == torch.equal(out, raw)


def test_diffusion_noise_grows_with_the_step():
    raw = torch.rand(1, 3, 16, 16)
    gaps = [(diffusion_noise(raw, t, torch.Generator().manual_seed(0)) - raw).abs().mean() for t in (10, 200, 900)]
    assert gaps[0] < gaps[1] < gaps[2]
    with pytest.raises(ValueError, match="t=1000"):
        diffusion_noise(raw, 1000)


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_pgd_on_a_real_model_lowers_ground_truth_likelihood(tiny_path, quantization):
    policy = load_policy(
        ModelConfig(str(tiny_path), precision="fp32", quantization=quantization, lora=None, device="cpu")
    )
    miner = Miner(policy.model, policy.processor, MineConfig("model", "source"))
    qs, answers = ["What color is the circle?", "Is there a star?"], ["red", "no"]
    prompts = encode_prompts(policy.processor, qs, pictures())
    raw = torch.stack(miner.codec.raw_images(prompts))
    objective = miner.objective(prompts, answer_token_ids(policy.processor, answers))
    res = pgd(objective, raw, 8 / 255, 2 / 255, steps=5, early_stop=False, generator=torch.Generator().manual_seed(0))
    assert (res.logp_after < res.logp_before).all()
    assert (res.images - raw).abs().max() <= 8 / 255 + 1e-6
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert all(p.grad is None for p in policy.model.parameters())  # no parameter gradients


@pytest.fixture(scope="module", params=["{}", "The shape is {}."], ids=["bare", "sentence"])
def seeing_model(tiny_root, request):
    """(policy, world, records): a tiny Qwen2.5-VL trained until greedy decoding gives the answers of 4 records
    that ask the same question about one-object images of 4 colours, so that only the image tells them apart.
    "sentence" trains it to answer as real models do ("The shape is red.") while the ground truth stays "red"."""
    world = WorldConfig(image_size=56, n_objects=1, grid=1, p_color=1 / 6)  # one shape filling the image, any colour
    pool = build_records(world, "train", 80)
    recs, colors = [], set()
    for r in pool:
        if r["question"] == pool[0]["question"] and r["answer"] not in colors and len(recs) < 4:
            recs.append(r)
            colors.add(r["answer"])
    assert len(recs) == 4
    torch.manual_seed(0)
    policy = load_policy(
        ModelConfig(
            str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root)),
            precision="fp32",
            quantization="none",
            lora=None,
            device="cpu",
        )
    )
    model, p = policy.model, policy.processor
    batch = encode_prompts(p, [r["question"] for r in recs], [r["image"] for r in recs])
    said = [request.param.format(r["answer"]) for r in recs]
    batch, mask = append_completions(batch, answer_token_ids(p, said), p.tokenizer.pad_token_id)
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        logp, greedy, _ = completion_scores(model, batch, mask)
        loss = -logp.sum() / mask.sum()
        if greedy.all() and loss < 0.1:  # right, with some margin
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert greedy.all(), "the tiny model did not learn to answer its 4 training records"
    model.requires_grad_(False)
    return policy, world, recs


def test_pgd_early_stop_records_the_first_wrong_answer(seeing_model):
    policy, world, recs = seeing_model
    cfg = MineConfig(
        "model", "source", epsilon=64.0, step_size=8.0, steps=20, random_start=False, early_stop=True, max_new_tokens=24
    )
    rows = Miner(policy.model, policy.processor, cfg, world.colors).mine(recs, 0)
    # Step 0 (the clean image, no random start) does not stop, also when the model words its answer unlike the
    # ground truth ("The shape is red." for "red"): success is the verifier's judgement, not a token match.
    assert all(r["clean_correct"] for r in rows), [r["clean_answer"] for r in rows]
    stopped = [r for r in rows if r["attack_steps"] < cfg.steps]
    assert len(stopped) >= 2
    for r in rows:
        rejected = r["rejected"][0]["content"][0]["text"]
        if r in stopped:
            assert r["attack_steps"] > 0 and r["logp_after"] < r["logp_before"]
            assert not is_correct(rejected, r["answer"], r["answer_type"], world.colors), (r["answer"], rejected)
            assert r["kept"]
        # Sign steps of step_size from the clean image: a stopped image moved no further after its stop.
        assert r["linf"] <= min(cfg.epsilon, r["attack_steps"] * cfg.step_size) + 1e-3


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_to_uint8_grid_gives_the_saved_picture_inside_the_ball(norm):
    g = torch.Generator().manual_seed(0)
    raw = torch.randint(0, 256, (3, 3, 20, 24), generator=g).float() / 255
    eps = 8 / 255
    moved = raw + project(raw, (torch.rand(raw.shape, generator=g) * 2 - 1) * eps * 3, eps, norm)
    grid = to_uint8_grid(moved, raw, eps, norm)
    assert torch.allclose((grid * 255).round(), grid * 255, atol=1e-4)
    # Saving and reading back the picture gives exactly these values: the image answered is the image saved.
    for x in grid:
        assert torch.allclose(to_raw(to_pil(x)), x, atol=1e-6)
    delta = grid - raw
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert (delta.flatten(1).norm(dim=1) <= eps + 1e-5).all()
    # Rounding moves each pixel by at most half a step, except where that would leave the ball.
    assert (grid - moved).abs().max() <= 1 / 255 + 1e-6


def test_taking_samples_from_a_batch_slices_each_image_whole(tiny_path, photos):
    """Qwen's pixel rows belong to images by their grids: the samples taken are those of a batch built alone."""
    processor = load_processor(tiny_path, AutoConfig.from_pretrained(tiny_path).model_type)
    qs = ["What is this?", "Is it a cat?", "How many?"]
    batch = encode_prompts(processor, qs, photos[:3])
    taken = take_rows(batch, torch.tensor([2, 0]))
    alone = encode_prompts(processor, [qs[2], qs[0]], [photos[2], photos[0]])
    assert torch.equal(taken["pixel_values"], alone["pixel_values"])
    assert set(taken) == set(batch) and all(len(taken[k]) == 2 for k in taken if k != "pixel_values")
    if "image_grid_thw" in batch:
        assert torch.equal(taken["image_grid_thw"], alone["image_grid_thw"])


def test_images_of_mixed_sizes_are_attacked_padded_and_their_padding_never_moves():
    small, large = torch.rand(3, 4, 6), torch.rand(3, 8, 8)
    batch, sizes = pad_stack([small, large])
    assert batch.shape == (2, 3, 8, 8) and sizes == [(4, 6), (8, 8)]
    assert [x.shape for x in unpad(batch, sizes)] == [small.shape, large.shape] and torch.equal(
        unpad(batch, sizes)[0], small
    )
    valid = torch.zeros(2, 1, 8, 8)
    valid[0, :, :4, :6] = valid[1] = 1

    def objective(x, index):  # darker is better, inside each image only
        return (x * valid[index]).flatten(1).sum(1), torch.ones(len(index), dtype=torch.bool)

    gen = torch.Generator().manual_seed(0)
    res = pgd(
        objective, batch, 0.1, 0.05, 3, random_start=True, norm="l2", early_stop=False, generator=gen, valid=valid
    )
    assert torch.equal(res.images[0, :, 4:], batch[0, :, 4:]) and torch.equal(
        res.images[0, :, :, 6:], batch[0, :, :, 6:]
    )
    assert ((res.images - batch).flatten(1).norm(dim=1) <= 0.1 + 1e-5).all()
    assert (
        torch.equal(pad_stack([small, small])[0], torch.stack([small, small])) and pad_stack([small, small])[1] is None
    )
