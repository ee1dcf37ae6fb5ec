"""`python -m mbpo_lit bench`: how fast the two hot paths run, in numbers (a benchmark command, not a test).

1. The hybrid GRPO step (`MBPOModule.training_step` under a real Lightning Trainer), twice on the same
   settings: as shipped (`share_prefix=True`: each distinct image encoded once per step, each prompt prefilled
   once for its completions; vlm/shared_prefix.py) and "rowwise" (`share_prefix=False`: one row per
   completion, every pass from pixels, the layout of TRL's GRPOTrainer). For each: wall time per optimizer
   step, samples/s, generated tokens/s, peak memory, and the vision tower's calls and images encoded per step
   (a forward hook on the architecture's vision module). Each side runs in its own process, so the peak
   memory is its own.
2. PGD mining: images/s, and its time relative to the bare forward+backward of the same number of steps on the
   same batch (PGD adds the projection, the codec and the greedy-match flag on top of that).
3. Padding: the share of prompt tokens that are padding in batches of mixed image sizes, drawn plainly and
   with length grouping (`HybridDataModule(length_group_batches=...)`).

The natural outside baseline is TRL's GRPOTrainer on the same settings; the TRL side is not written (and
`trl` is not a dependency), so it reports "unavailable" rather than a guess, and the rowwise layout stands in
for it. Results print as a table with the ratios and go to `--out` as JSON.

    python -m mbpo_lit bench --group_size 8 --steps 5
    python -m mbpo_lit bench --size small --precision bf16 --out runs/bench/gpu.json
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from mbpo_lit.vlm.arch import arch_of


@dataclass
class BenchConfig:
    """Settings shared by every measured path (each is a command-line option).

    Args:
        model: a checkpoint directory; None writes a random one of `size` under runs/checkpoints.
        arch: the checkpoint's architecture.
        size: of the random checkpoint: "tiny" (CPU) or "small" (a 1024-wide, 8-layer LM with a 448-px vision
            tower, for GPUs).
        quantization: of the policy's frozen base weights.
        precision: of the policy (bf16 for GPU runs).
        group_size: G, completions per online prompt.
        prompts: online prompts per step (no offline pairs: TRL's GRPOTrainer has none).
        max_new_tokens: longest completion.
        beta: KL weight (> 0: the reference pass is timed too).
        mu: optimisation passes over one rollout.
        steps: measured steps, after `warmup` unmeasured ones.
        warmup: unmeasured steps first.
        pgd_steps: PGD steps of the mining measurement.
        pgd_images: images attacked together.
        out: the results as JSON.
    """

    model: str | None = None
    arch: Literal["qwen2_5_vl", "qwen2_vl", "llava"] = "qwen2_5_vl"
    size: Literal["tiny", "small"] = "tiny"
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    precision: Literal["bf16", "fp16", "fp32"] = "fp32"
    group_size: int = 8
    prompts: int = 4
    max_new_tokens: int = 8
    beta: float = 0.04
    mu: int = 1
    steps: int = 5
    warmup: int = 1
    pgd_steps: int = 10
    pgd_images: int = 8
    out: str = "runs/bench/bench.json"


class _StepTimer(L.Callback):
    """Wall time of each training batch; the first `warmup` are dropped."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


def count_vision_calls(model: torch.nn.Module, arch: str) -> dict[str, int]:
    """Install a forward hook on the vision module; returns the counters it increments: "calls" and
    "images" (images encoded: rows of Qwen's grid_thw, or the batch size of LLaVA's pixel_values)."""
    name = arch_of(arch).vision_modules[0]
    vision = next(m for n, m in model.named_modules() if n.split(".")[-1] == name)
    counts = {"calls": 0, "images": 0}

    def hook(module, args, kwargs, output):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        pixels = args[0] if args else kwargs.get("pixel_values", kwargs.get("hidden_states"))
        counts["calls"] += 1
        counts["images"] += int(grid.shape[0]) if grid is not None else int(pixels.shape[0])

    vision.register_forward_hook(hook, with_kwargs=True)
    return counts


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_mbpo(cfg: BenchConfig, path: str, share_prefix: bool = True) -> dict:
    """Time `cfg.steps` hybrid GRPO steps of MBPOModule on online prompts of the embedded world."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.train.module import MBPOModule
    from mbpo_lit.train.settings import Loss, Rewards, Sampling
    from mbpo_lit.vlm.policy import LoraSettings, ModelConfig

    online = WorldSource(["train"], 256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = MBPOModule(
        ModelConfig(
            path,
            precision=cfg.precision,
            quantization=cfg.quantization,
            lora=LoraSettings(r=8, alpha=16),
            device=device,
        ),
        sampling=Sampling(group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens),
        loss=Loss(beta=cfg.beta, mu=cfg.mu),
        rewards=Rewards(vocabulary=online.vocabulary),
        sample_table_every=0,
        evaluate_after_fit=False,
        share_prefix=share_prefix,
    )
    data = HybridDataModule(
        pairs=None, online=online, val=None, online_per_batch=cfg.prompts, batches_per_epoch=cfg.warmup + cfg.steps
    )
    module.configure_model()
    calls, tokens = count_vision_calls(module.model, cfg.arch), [0]
    rollout = module.rollout

    def counted_rollout(*args):
        out = rollout(*args)
        tokens[0] += sum(len(c) for c in out[1])
        return out

    module.rollout = counted_rollout
    timer = _StepTimer()
    trainer = L.Trainer(
        max_steps=(cfg.warmup + cfg.steps) * cfg.mu,
        logger=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, data)
    measured = timer.times[cfg.warmup :]
    per_step = sum(measured) / len(measured)
    total = cfg.warmup + cfg.steps
    return {
        "step_s": per_step,
        "samples_per_s": cfg.prompts * cfg.group_size / per_step,
        "generated_tokens_per_s": tokens[0] / total / per_step,
        "vision_calls_per_step": calls["calls"] / total,
        "images_encoded_per_step": calls["images"] / total,
        "distinct_images_per_step": cfg.prompts,
        "peak_memory_mb": peak_memory_mb(module.device),
    }


def bench_trl(cfg: BenchConfig, path: str) -> dict:
    """TRL's GRPOTrainer on the same settings, if TRL is installed."""
    try:
        import trl
    except ImportError:
        return {"unavailable": "trl is not installed"}
    return {"unavailable": f"trl {trl.__version__} is installed, but the TRL side of this benchmark is not written"}


def bench_pgd(cfg: BenchConfig, path: str) -> dict:
    """PGD images/s and its time over the bare forward+backward of the same steps on the same batch."""
    from mbpo_lit.core.attack import pgd
    from mbpo_lit.mine import MineConfig, Miner
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
    # so that neither side pays for the other's warm-up or for a burst of background load.
    completion_logprobs(policy.model, dict(batch, pixel_values=pixels), mask).sum().backward()
    times = [(seconds(attack), seconds(bare)) for _ in range(3)]
    pgd_s, bare_s = min(t[0] for t in times), min(t[1] for t in times)
    return {
        "images_per_s": cfg.pgd_images / pgd_s,
        "pgd_s": pgd_s,
        "bare_forward_backward_s": bare_s,
        "overhead_ratio": pgd_s / bare_s,
    }


def bench_padding(cfg: BenchConfig, path: str, batches: int = 32, group: int = 16) -> dict:
    """Share of prompt tokens that are padding, in batches of `cfg.prompts` world prompts whose images come
    in four sizes (112-280 px, as a dataset of mixed resolutions), drawn plainly and length-grouped."""
    from mbpo_lit.data.hybrid import HybridBatches
    from mbpo_lit.testbed.world import WorldConfig, build_records
    from mbpo_lit.vlm.arch import load_processor
    from mbpo_lit.vlm.chat import encode_prompts

    processor = load_processor(path, cfg.arch)
    sizes = (112, 168, 224, 280)
    if hasattr(processor.image_processor, "merge_size"):  # Qwen-VL: keep each image's resolution, as the 7B
        processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 280 * 280}  # processors do
    records = [
        dict(r, image=r["image"].resize((sizes[i % 4],) * 2))
        for i, r in enumerate(build_records(WorldConfig(), "train", 256))
    ]
    out = {}
    for name, m in (("plain", 1), ("length_grouped", group)):
        data = HybridBatches([], records, 0, cfg.prompts, batches, seed=0, group_batches=m)
        pad = total = 0
        for i in range(batches):
            online = data[i]["online"]
            questions, images = [r["question"] for r in online], [r["image"] for r in online]
            mask = encode_prompts(processor, questions, images)["attention_mask"]
            pad, total = pad + int((mask == 0).sum()), total + mask.numel()
        out[f"{name}_padding_fraction"] = pad / total
    return out


def _isolated(fn, *args) -> dict:
    """`fn(*args)` in a fresh process, so that its peak memory (RSS on the CPU) is its own."""
    if torch.cuda.is_available():  # CUDA keeps its own peak counter; no fork after CUDA initialisation
        torch.cuda.reset_peak_memory_stats()
        return fn(*args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def ratios(results: dict) -> dict:
    """The headline numbers as ratios: step time against the rowwise layout (and TRL), vision-tower encodings
    per distinct image, PGD's overhead, padding saved by length grouping (a side that did not run gives
    "unavailable")."""
    fast, rowwise, trl, pad = results["mbpo_lit"], results["rowwise"], results["trl"], results["padding"]
    return {
        "step_time_vs_rowwise": fast["step_s"] / rowwise["step_s"],
        "step_time_vs_trl": fast["step_s"] / trl["step_s"] if "step_s" in trl else "unavailable",
        "images_encoded_per_distinct_image": fast["images_encoded_per_step"] / fast["distinct_images_per_step"],
        "rowwise_images_encoded_per_distinct_image": rowwise["images_encoded_per_step"]
        / rowwise["distinct_images_per_step"],
        "pgd_overhead_vs_bare_forward_backward": results["pgd"]["overhead_ratio"],
        "padding_length_grouped_vs_plain": (
            pad["length_grouped_padding_fraction"] / pad["plain_padding_fraction"]
            if pad["plain_padding_fraction"]
            else "no padding (one prompt per batch?)"
        ),
    }


def checkpoint(cfg: BenchConfig) -> str:
    """`cfg.model`, or a random checkpoint of `cfg.size` written (once) under runs/checkpoints."""
    if cfg.model is not None:
        return cfg.model
    from mbpo_lit.testbed.tiny import TinySpec, ensure_tiny_checkpoint

    sizes = {
        "tiny": ("runs/checkpoints/bench", TinySpec(image_size=112)),
        "small": (
            "runs/checkpoints/bench-small",
            TinySpec(
                hidden_size=1024,
                intermediate_size=2816,
                num_layers=8,
                num_heads=16,
                num_kv_heads=4,
                vision_hidden_size=512,
                vision_layers=8,
                image_size=448,
            ),
        ),
    }
    if cfg.size not in sizes:
        raise ValueError(f"size={cfg.size!r} is not one of {list(sizes)}")
    root, spec = sizes[cfg.size]
    return str(ensure_tiny_checkpoint(cfg.arch, root, spec))


def run(cfg: BenchConfig) -> dict:
    """Run every measurement, write the JSON to `cfg.out` and return the results."""
    path = checkpoint(cfg)
    results = {
        "config": asdict(cfg),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "mbpo_lit": _isolated(bench_mbpo, cfg, path, True),
        "rowwise": _isolated(bench_mbpo, cfg, path, False),
        "trl": bench_trl(cfg, path),
        "pgd": _isolated(bench_pgd, cfg, path),
        "padding": bench_padding(cfg, path),
    }
    results["ratios"] = ratios(results)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


def format_results(results: dict) -> str:
    lines = [f"{'path':<10} {'metric':<42} value"]
    for side in ("mbpo_lit", "rowwise", "trl", "pgd", "padding", "ratios"):
        for k, v in results[side].items():
            lines.append(f"{side:<10} {k:<42} {v:.3f}" if isinstance(v, float) else f"{side:<10} {k:<42} {v}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from mbpo_lit.cli import parse_dataclass, user_errors

    cfg = parse_dataclass(
        BenchConfig,
        "Time a hybrid GRPO step (shared prefix vs rowwise), PGD mining and "
        "padding with length grouping, on a tiny or small random checkpoint.",
        argv,
    )
    with user_errors():
        results = run(cfg)
    print(format_results(results))
    print(f"results: {cfg.out}")


if __name__ == "__main__":
    main()
