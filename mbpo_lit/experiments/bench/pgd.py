"""PGD mining in the benchmark: PGD's time against the bare forward+backward of the same steps, and `Miner.mine`
on photographs of mixed sizes, grouped by size against one image at a time."""

from __future__ import annotations

import time

import torch

from mbpo_lit.experiments.bench.config import BenchConfig
from mbpo_lit.mining.fast_vision import fast_vision


def bench_pgd(cfg: BenchConfig, path: str) -> dict:
    """PGD images/s and its time over the bare forward+backward of the same steps on the same batch."""
    from mbpo_lit.core.attack import pgd
    from mbpo_lit.mining import MineConfig, Miner
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
    from mbpo_lit.vlm.logprobs import completion_logprobs
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    source = WorldSource(["train"], cfg.pgd_images)
    policy = load_policy(ModelConfig(path, precision=cfg.precision, quantization="none", lora=None))
    mine_cfg = MineConfig(model=path, source=source, n=cfg.pgd_images, steps=cfg.pgd_steps, early_stop=False)
    miner = Miner(policy.model, policy.processor, mine_cfg, source.vocabulary)
    records, _ = source.load()
    prompts = encode_prompts(policy.processor, [r["question"] for r in records], [r["image"] for r in records])
    ids = answer_token_ids(policy.processor, [r["answer"] for r in records])
    clean = torch.stack(miner.codec.raw_images(prompts)).to(miner.device)
    objective = miner.objective(prompts, ids)
    batch, mask = append_completions(prompts, ids, policy.processor.tokenizer.pad_token_id)
    pixels = batch["pixel_values"].clone().requires_grad_(True)

    def attack():
        pgd(objective, clean, 32 / 255, 4 / 255, cfg.pgd_steps, True, "linf", False)

    def bare():
        for _ in range(cfg.pgd_steps):
            completion_logprobs(policy.model, dict(batch, pixel_values=pixels), mask).sum().backward()

    def seconds(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # One untimed step warms up the kernels and allocator; then each is timed three times, interleaved, best kept,
    # so that neither side pays for the other's warm-up or for a burst of background load. Both sides embed patches
    # as `Miner.mine` does (`fast_vision`).
    with fast_vision(policy.model):
        completion_logprobs(policy.model, dict(batch, pixel_values=pixels), mask).sum().backward()
        times = [(seconds(attack), seconds(bare)) for _ in range(3)]
    pgd_s, bare_s = min(t[0] for t in times), min(t[1] for t in times)
    return {
        "images_per_s": cfg.pgd_images / pgd_s,
        "pgd_s": pgd_s,
        "bare_forward_backward_s": bare_s,
        "overhead_ratio": pgd_s / bare_s,
    }


def bench_mining(cfg: BenchConfig) -> dict:
    """The default mining config (`testbed.embedded.EMBEDDED_MINING`, early stop on) on the world's base model
    (shipped, unpacked in seconds): `Miner.mine` on `cfg.pgd_images` train records as one chunk, timed whole (best
    of three rounds); the sample-steps PGD executed against those the samples needed (each sample's steps until it
    succeeded, plus the step that saw it succeed); and PGD's time per executed sample-step against a bare
    forward+backward per sample-step, batched as PGD's steps were: what PGD adds is judging each step's answer (a
    teacher-forced pass on the 8-bit image where the differentiable pass leaves it open, decoding where neither
    proves the ground truth greedy) and the projection. `moved_sample_steps` counts the sample-steps that took a
    gradient step."""
    from mbpo_lit.mining import MineConfig, Miner
    from mbpo_lit.testbed.base_model import WarmStartConfig, build_base_model
    from mbpo_lit.testbed.embedded import EMBEDDED_MINING
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.vlm.chat import answer_token_ids, encode_prompts
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    base = str(build_base_model(WarmStartConfig(), progress=False))
    source = WorldSource(["train"], cfg.pgd_images)
    records, _ = source.load()
    policy = load_policy(ModelConfig(base, precision=cfg.precision, quantization="none", lora=None))
    settings = dict(EMBEDDED_MINING, n=len(records), batch_size=len(records))
    miner = Miner(policy.model, policy.processor, MineConfig(model=base, source=source, **settings), source.vocabulary)
    batches, moved, pgd_seconds = [], [], []
    objective, perturb = miner.objective, miner.perturb

    def counted(*args, **kwargs):  # the objective, recording the samples each step judges and those that move on
        value = objective(*args, **kwargs)

        def step(images, index):
            logp, going_on = value(images, index)
            batches.append(len(index))
            moved.append(int(going_on.sum()))
            return logp, going_on

        step.answers, step.logps = value.answers, value.logps
        return step

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = perturb(*args, **kwargs)
        pgd_seconds.append(time.perf_counter() - start)
        return out

    miner.objective, miner.perturb = counted, timed
    miner.mine(records[:2], 0)  # warm-up
    prompts = encode_prompts(policy.processor, [r["question"] for r in records], [r["image"] for r in records])
    loglik = miner.loglik(prompts, answer_token_ids(policy.processor, [r["answer"] for r in records]))
    clean = torch.stack(miner.codec.raw_images(prompts)).to(miner.device)

    def bare() -> float:
        start = time.perf_counter()
        with fast_vision(policy.model):  # the model as `Miner.mine` runs it
            for k in steps:  # a forward+backward per executed sample-step, batched as PGD's steps were
                loglik(clean[:k].clone().requires_grad_(True), torch.arange(k)).sum().backward()
        return time.perf_counter() - start

    # Three rounds, mining and its bare passes interleaved, best of each kept (as in `bench_pgd`): a burst of
    # background load on a shared machine moves one round, not the ratio.
    mine_s, pgd_s, bare_s = [], [], []
    for _ in range(3):
        batches.clear()
        moved.clear()
        start = time.perf_counter()
        rows = miner.mine(records, 0)
        mine_s.append(time.perf_counter() - start)
        pgd_s.append(pgd_seconds[-1])
        steps = list(batches)
        bare_s.append(bare())
    needed = sum(r["attack_steps"] + 1 for r in rows)
    return {
        "images": len(records),
        "images_per_s": len(records) / min(mine_s),
        "executed_sample_steps": sum(batches),
        "needed_sample_steps": needed,
        "moved_sample_steps": sum(moved),
        "efficiency": needed / sum(batches),
        "pgd_s": min(pgd_s),
        "bare_forward_backward_s": min(bare_s),
        "pgd_vs_bare_forward_backward": min(pgd_s) / min(bare_s),
    }


# scikit-image's sample photographs (no download: they ship with the package) and a yes/no question each.
PHOTOS = {
    "astronaut": ("Is there a person in the image?", "yes"),
    "coffee": ("Is there a cup in the image?", "yes"),
    "chelsea": ("Is there a dog in the image?", "no"),
    "rocket": ("Is there a rocket in the image?", "yes"),
    "hubble_deep_field": ("Is there a car in the image?", "no"),
    "immunohistochemistry": ("Is there a cat in the image?", "no"),
}


def photo_records(n: int, size: int = 160) -> list[dict]:
    """n records cycling through `PHOTOS`, each thumbnailed to fit `size` px (so of several sizes:
    160x160, 160x107, 160x106, 160x140)."""
    from PIL import Image
    from skimage import data

    images = {}
    for name in PHOTOS:
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        im.thumbnail((size, size))
        images[name] = im
    names = list(PHOTOS)
    return [
        {
            "id": f"{names[i % len(names)]}-{i}",
            "image": images[names[i % len(names)]],
            "question": PHOTOS[names[i % len(names)]][0],
            "answer": PHOTOS[names[i % len(names)]][1],
            "answer_type": "yes_no",
        }
        for i in range(n)
    ]


def bench_mine_sizes(cfg: BenchConfig, path: str) -> dict:
    """Mining throughput on photographs of mixed sizes: `Miner.mine` on `cfg.pgd_images` of them (one batch, as
    the miner attacks a chunk), against the same photographs resized to one size (the ceiling of batching) and
    against each record alone (batches of 1).

    The whole of `Miner.mine` is timed (PGD with `cfg.pgd_steps` steps and no early stop, so both ways do the
    same steps; the clean and perturbed answers; IIG). The processor keeps each image's resolution within
    56x56-280x280 px, as the 7B Qwen-VL processors do, so the sizes reach the vision tower."""
    from mbpo_lit.mining import MineConfig, Miner
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    records = photo_records(cfg.pgd_images)
    policy = load_policy(ModelConfig(path, precision=cfg.precision, quantization="none", lora=None))
    if hasattr(policy.processor.image_processor, "merge_size"):
        policy.processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 280 * 280}
    mine_cfg = MineConfig(
        model=path, source="photos", n=len(records), steps=cfg.pgd_steps, early_stop=False, iig_filter="none"
    )
    miner = Miner(policy.model, policy.processor, mine_cfg, None)
    sizes = sorted({r["image"].size for r in records})

    def seconds(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def mixed():
        miner.mine(records, 0)

    def one_at_a_time():
        for i, r in enumerate(records):
            miner.mine([r], i)

    # The ceiling of batching on this machine: the same photographs all at one size, against those one at a time.
    square = [dict(r, image=r["image"].resize((160, 160))) for r in records]

    def one_size():
        miner.mine(square, 0)

    def one_size_one_at_a_time():
        for i, r in enumerate(square):
            miner.mine([r], i)

    miner.mine(records[:1], 0)  # warm-up
    # Interleaved, best of two each, as in bench_pgd.
    fns = (mixed, one_at_a_time, one_size, one_size_one_at_a_time)
    times = [[seconds(fn) for fn in fns] for _ in range(2)]
    mixed_s, single_s, same_s, same_single_s = (min(t[i] for t in times) for i in range(4))
    return {
        "images": len(records),
        "image_sizes": [f"{w}x{h}" for w, h in sizes],
        "mixed_sizes_images_per_s": len(records) / mixed_s,
        "one_size_images_per_s": len(records) / same_s,
        "one_at_a_time_images_per_s": len(records) / single_s,
        "mixed_vs_one_size_throughput": same_s / mixed_s,
        "mixed_batched_vs_one_at_a_time_speedup": single_s / mixed_s,
        "one_size_batched_vs_one_at_a_time_speedup": same_single_s / same_s,
    }
