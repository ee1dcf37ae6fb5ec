"""`python -m mbpo_lit bench`: every measurement on one checkpoint, the ratios, the table and the JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mbpo_lit.experiments.bench.config import BenchConfig
from mbpo_lit.experiments.bench.padding import bench_padding
from mbpo_lit.experiments.bench.pgd import bench_mine_sizes, bench_mining, bench_pgd
from mbpo_lit.experiments.bench.precision import bench_precision, precision_lines
from mbpo_lit.experiments.bench.step import bench_mbpo, isolated
from mbpo_lit.experiments.bench.trl import bench_trl


def ratios(results: dict) -> dict:
    """The headline numbers as ratios: step time against the rowwise layout and TRL, vision-tower encodings
    per distinct image, PGD's overhead, mining's efficiency, mixed-size mining against one size, bf16-mixed's step
    time and peak memory against bf16-true and fp32, padding saved by length grouping (a side that did not run
    gives "unavailable"; a skipped section, no ratio)."""
    fast, rowwise, trl, pad = results["mbpo_lit"], results["rowwise"], results["trl"], results["padding"]
    out = {}
    if "step_s" in fast:
        out |= {
            "step_time_vs_rowwise": fast["step_s"] / rowwise["step_s"],
            "step_time_vs_trl": fast["step_s"] / trl["step_s"] if "step_s" in trl else "unavailable",
            "rowwise_step_time_vs_trl": rowwise["step_s"] / trl["step_s"] if "step_s" in trl else "unavailable",
            "images_encoded_per_distinct_image": fast["images_encoded_per_step"] / fast["distinct_images_per_step"],
            "rowwise_images_encoded_per_distinct_image": rowwise["images_encoded_per_step"]
            / rowwise["distinct_images_per_step"],
            "trl_images_encoded_per_distinct_image": (
                trl["images_encoded_per_step"] / trl["distinct_images_per_step"] if "step_s" in trl else "unavailable"
            ),
        }
    if "overhead_ratio" in results["pgd"]:
        out["pgd_overhead_vs_bare_forward_backward"] = results["pgd"]["overhead_ratio"]
    if "efficiency" in results["mining"]:
        out["mining_sample_steps_needed_vs_executed"] = results["mining"]["efficiency"]
        out["mining_pgd_vs_bare_forward_backward"] = results["mining"]["pgd_vs_bare_forward_backward"]
    if "mixed_vs_one_size_throughput" in results["mine_sizes"]:
        out["mining_mixed_sizes_vs_one_size"] = results["mine_sizes"]["mixed_vs_one_size_throughput"]
    for base in ("bf16_true", "fp32"):
        if f"bf16_mixed_vs_{base}" in results["precision"]:
            mixed = results["precision"][f"bf16_mixed_vs_{base}"]
            out[f"bf16_mixed_vs_{base}_step_time"] = mixed["step_time"]
            out[f"bf16_mixed_vs_{base}_peak_memory"] = mixed["peak_memory"]
    if "plain_padding_fraction" in pad:
        out["padding_length_grouped_vs_plain"] = (
            pad["length_grouped_padding_fraction"] / pad["plain_padding_fraction"]
            if pad["plain_padding_fraction"]
            else "no padding (one prompt per batch?)"
        )
    return out


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
    if cfg.image_size is not None and cfg.image_size != spec.image_size:
        if cfg.image_size % 28:
            raise ValueError(f"image_size={cfg.image_size} must be a multiple of 28 (2x2 merged patches of 14 px)")
        root, spec = f"{root}-{cfg.image_size}px", replace(spec, image_size=cfg.image_size)
    return str(ensure_tiny_checkpoint(cfg.arch, root, spec))


def prompt_tokens(cfg: BenchConfig, path: str) -> int:
    """Tokens of one online prompt (chat template, question and image tokens) as both GRPO sides encode it."""
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.vlm.arch import load_processor
    from mbpo_lit.vlm.chat import encode_prompts

    record = WorldSource(["train"], 1).load()[0][0]
    batch = encode_prompts(load_processor(path, cfg.arch), [record["question"]], [record["image"]])
    return int(batch["attention_mask"].sum())


def run(cfg: BenchConfig) -> dict:
    """Run every measurement, write the JSON to `cfg.out` and return the results."""
    path = checkpoint(cfg)
    skipped = {"unavailable": "skipped (--sections)"}
    grpo = "grpo" in cfg.sections
    results = {
        "config": asdict(cfg),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "prompt_tokens": prompt_tokens(cfg, path),
        "mbpo_lit": isolated(bench_mbpo, cfg, path, True) if grpo else skipped,
        "rowwise": isolated(bench_mbpo, cfg, path, False) if grpo else skipped,
        "trl": bench_trl(cfg, path) if grpo else skipped,
        "pgd": isolated(bench_pgd, cfg, path) if "pgd" in cfg.sections else skipped,
        "mining": isolated(bench_mining, cfg) if "mining" in cfg.sections else skipped,
        "mine_sizes": isolated(bench_mine_sizes, cfg, path) if "mine_sizes" in cfg.sections else skipped,
        "padding": bench_padding(cfg, path) if "padding" in cfg.sections else skipped,
        "precision": bench_precision(cfg, path) if "precision" in cfg.sections else skipped,
    }
    results["ratios"] = ratios(results)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


# The GRPO step's metrics, in the side-by-side table (the rest of each side's dict goes to the JSON only).
STEP_METRICS = (
    "step_s",
    "step_s_min",
    "step_s_max",
    "samples_per_s",
    "generated_tokens_per_s",
    "vision_calls_per_step",
    "images_encoded_per_step",
    "distinct_images_per_step",
    "peak_memory_mb",
)


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def format_results(results: dict) -> str:
    """The GRPO step side by side (mbpo_lit shared prefix, rowwise, TRL, and each against mbpo_lit), then the
    other measurements, the ratios, and the settings the TRL side could not match."""
    sides = ("mbpo_lit", "rowwise", "trl")
    trl = results["trl"]
    head = f"{'GRPO step':<26}" + "".join(f"{s:>14}" for s in sides) + f"{'rowwise/mbpo':>14}{'trl/mbpo':>14}"
    lines = [head] if "step_s" in results["mbpo_lit"] else ["GRPO step: skipped (--sections)"]
    for k in STEP_METRICS if "step_s" in results["mbpo_lit"] else ():
        row = [results[s].get(k, "-") for s in sides]
        fast = results["mbpo_lit"][k]
        rel = [r / fast if isinstance(r, (int, float)) and fast else "-" for r in row[1:]]
        lines.append(f"{k:<26}" + "".join(f"{_cell(v):>14}" for v in row + rel))
    lines.append(
        f"gradient checkpointing: {'on' if results['config']['gradient_checkpointing'] else 'off'}; "
        f"G {results['config']['group_size']}, {results['config']['prompts']} prompts of "
        f"{results['prompt_tokens']} tokens"
    )
    if "unavailable" in trl:
        lines.append(f"trl: {trl['unavailable']}")
    else:
        lines.append(f"trl {trl['trl_version']}, LoRA trained in {', '.join(trl['lora_dtype_trained'])}")
    lines.append("")
    lines.append(f"{'path':<11} {'metric':<44} value")
    for side in ("pgd", "mining", "mine_sizes", "padding", "ratios"):
        for k, v in results[side].items():
            lines.append(f"{side:<11} {k:<44} {_cell(v)}")
    if precision := precision_lines(results["precision"]):
        lines += ["", *precision]
    if "trl_unmatched" in trl:
        lines.append("")
        lines.append("not matched on the TRL side:")
        lines += [f"  - {u}" for u in trl["trl_unmatched"]]
    return "\n".join(lines)


def bench(cfg: BenchConfig) -> dict:
    """Run every measurement of `cfg`, print the table and where the JSON went."""
    results = run(cfg)
    print(format_results(results))
    print(f"results: {cfg.out}")
    return results


def main(argv: list[str] | None = None) -> dict:
    from mbpo_lit import cli

    return cli.run(BenchConfig, bench, argv)
