"""The `precision` section of `python -m mbpo_lit bench`: what the 7B recipes' `trainer.precision: bf16-mixed`
costs against `bf16-true`, with fp32 for reference.

Each mode is the mbpo_lit GRPO step (shared prefix, `step.bench_mbpo`) in its own process, on the same checkpoint,
settings, prompts and images:

- "fp32": weights loaded in fp32, Lightning's "32-true" (the CPU default);
- "bf16-true": weights loaded in bf16, Lightning casts the whole module to bf16, LoRA weights included, and
  AdamW keeps its state in bf16 (what the recipes trained under before);
- "bf16-mixed": weights loaded in bf16, the LoRA weights and AdamW's state stay fp32, the forward runs under bf16
  autocast (what the recipes train under now, as QLoRA does).

Peak memory is CUDA's `max_memory_allocated` on a GPU, the process's peak resident set on the CPU (weights,
libraries and allocator slack included: on a tiny model the libraries dominate it, so the CPU peaks differ by
little; the GPU row of `bench-sweep --preset gpu` is the one that measures what the adapters' precision costs).
"""

from __future__ import annotations

from dataclasses import replace

from mbpo_lit.experiments.bench.config import BenchConfig
from mbpo_lit.experiments.bench.step import bench_mbpo, isolated

# mode -> (the policy's load precision, Lightning's trainer precision)
PRECISIONS: dict[str, tuple[str, str]] = {
    "fp32": ("fp32", "32-true"),
    "bf16-true": ("bf16", "bf16-true"),
    "bf16-mixed": ("bf16", "bf16-mixed"),
}
KEPT = ("step_s", "step_s_min", "step_s_max", "samples_per_s", "peak_memory_mb", "trainable_dtypes")


def bench_precision(cfg: BenchConfig, path: str) -> dict:
    """Each mode's step time (median, min, max), samples/s, peak memory and trained dtypes, then bf16-mixed's
    step time and peak memory against bf16-true's and fp32's."""
    out: dict = {}
    for mode, (load, trainer) in PRECISIONS.items():
        run = isolated(bench_mbpo, replace(cfg, precision=load), path, True, trainer)
        out[mode] = {"load_precision": load, "trainer_precision": trainer} | {k: run[k] for k in KEPT}
    mixed = out["bf16-mixed"]
    for base in ("bf16-true", "fp32"):
        out[f"bf16_mixed_vs_{base.replace('-', '_')}"] = {
            "step_time": mixed["step_s"] / out[base]["step_s"],
            "peak_memory": mixed["peak_memory_mb"] / out[base]["peak_memory_mb"],
        }
    return out


def precision_lines(results: dict) -> list[str]:
    """The precision section as table lines for `format_results` (nothing when it did not run)."""
    if "bf16-mixed" not in results:
        return []
    lines = [f"{'precision':<11} {'step_s (min-max)':<24} {'peak MB':>10}  trained dtypes"]
    for mode in PRECISIONS:
        r = results[mode]
        spread = f"{r['step_s']:.3f} ({r['step_s_min']:.3f}-{r['step_s_max']:.3f})"
        lines.append(f"{mode:<11} {spread:<24} {r['peak_memory_mb']:>10,.0f}  {', '.join(r['trainable_dtypes'])}")
    for base in ("bf16_true", "fp32"):
        ratio = results[f"bf16_mixed_vs_{base}"]
        lines.append(
            f"bf16-mixed / {base.replace('_', '-')}: step time {ratio['step_time']:.2f}x, "
            f"peak memory {ratio['peak_memory']:.2f}x"
        )
    return lines
