"""The mbpo_lit side of the GRPO step benchmark (`MBPOModule.training_step` under a real Lightning Trainer,
with the shared prefix or one row per completion), and what both GRPO sides measure with: step times, the vision
tower's calls, peak memory, a process of its own."""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import time

import lightning as L
import torch

from mbpo_lit.experiments.bench.config import BENCH_LORA, BenchConfig
from mbpo_lit.vlm.arch import arch_of


class _StepTimer(L.Callback):
    """Wall time of each training batch (the caller drops the first `warmup`)."""

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


def step_stats(times: list[float], warmup: int) -> dict:
    """Median and spread (min, max) of the step times after the first `warmup`, and the times themselves."""
    measured = times[warmup:]
    if not measured:
        raise ValueError(f"no measured step: {len(times)} steps ran, {warmup} of them warm-up")
    return {
        "step_s": statistics.median(measured),
        "step_s_min": min(measured),
        "step_s_max": max(measured),
        "steps_measured": len(measured),
        "step_times_s": measured,
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_mbpo(cfg: BenchConfig, path: str, share_prefix: bool = True, trainer_precision: str = "32-true") -> dict:
    """Time `cfg.steps` hybrid GRPO steps of MBPOModule on online prompts of the embedded world, the policy loaded
    in `cfg.precision` and trained under Lightning's `trainer_precision` ("32-true", "bf16-true", "bf16-mixed")."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.train.module import MBPOModule
    from mbpo_lit.train.settings import Loss, Rewards, Sampling
    from mbpo_lit.vlm.policy import ModelConfig

    online = WorldSource(["train"], 256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = MBPOModule(
        ModelConfig(
            path,
            precision=cfg.precision,
            quantization=cfg.quantization,
            lora=BENCH_LORA,
            device=device,
            gradient_checkpointing=cfg.gradient_checkpointing,
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
    with tempfile.TemporaryDirectory() as root:  # fit's end exports the adapters under default_root_dir
        trainer = L.Trainer(
            max_steps=(cfg.warmup + cfg.steps) * cfg.mu,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=root,
            precision=trainer_precision,
        )
        trainer.fit(module, data)
    stats = step_stats(timer.times, cfg.warmup)
    out = step_results(cfg, stats, tokens[0], calls, peak_memory_mb(module.device))
    return out | {
        # read from the model, not the settings: whether the layers did checkpoint
        "gradient_checkpointing": any(getattr(m, "gradient_checkpointing", False) for m in module.model.modules()),
        "trainer_precision": trainer_precision,
        "trainable_dtypes": sorted({str(p.dtype) for p in module.model.parameters() if p.requires_grad}),
    }


def step_results(cfg: BenchConfig, stats: dict, tokens: int, calls: dict, peak_mb: float) -> dict:
    """One GRPO side's numbers: `stats` (step_stats) plus throughput, vision-tower counts per step, memory."""
    total, per_step = cfg.warmup + cfg.steps, stats["step_s"]
    return {
        **stats,
        "samples_per_s": cfg.prompts * cfg.group_size / per_step,
        "generated_tokens_per_s": tokens / total / per_step,
        "vision_calls_per_step": calls["calls"] / total,
        "images_encoded_per_step": calls["images"] / total,
        "distinct_images_per_step": cfg.prompts,
        "peak_memory_mb": peak_mb,
    }


def isolated(fn, *args) -> dict:
    """`fn(*args)` in a fresh process, so that its peak memory (RSS on the CPU) is its own."""
    if torch.cuda.is_available():  # CUDA keeps its own peak counter; no fork after CUDA initialisation
        torch.cuda.reset_peak_memory_stats()
        return fn(*args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)
