"""`python -m mbpo_lit bench-sweep`: the GRPO step benchmark over a grid of settings, as one table.

One `bench` run answers "how fast at these settings"; the question a user with a bigger model asks is how the
ratios move with model size, G and prompt length, and whether the GPU agrees with the CPU. This runs
`experiments/bench/` (GRPO step only: shared prefix, one row per completion, TRL's GRPOTrainer) once per row
of a preset, each in its own process, writes every run's JSON under `--out`, and prints a markdown table of step
times, ratios and peak memory.

    python -m mbpo_lit bench-sweep --preset cpu   # tiny at G 4/8/16; small at G 4/8/16, 89 and 281 prompt tokens
    python -m mbpo_lit bench-sweep --preset gpu   # small in bf16 and 4-bit, with and without checkpointing;
                                                  # mining in bf16; bf16-mixed against bf16-true training
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Each row: a name and the `bench` options that differ from the preset's common ones.
PRESETS: dict[str, dict] = {
    "cpu": {
        "common": ["--sections", "[grpo]", "--precision", "fp32", "--quantization", "4bit"],
        "rows": {
            "tiny-g4": ["--group_size", "4", "--prompts", "4", "--steps", "10"],
            "tiny-g8": ["--group_size", "8", "--prompts", "4", "--steps", "10"],
            "tiny-g16": ["--group_size", "16", "--prompts", "4", "--steps", "10"],
            # One prompt per step keeps the small model's row-wise and TRL sides short enough for a CPU
            # (their timings: results/performance.md).
            "small-g4": ["--size", "small", "--group_size", "4", "--prompts", "1", "--steps", "2"],
            "small-g8": ["--size", "small", "--group_size", "8", "--prompts", "1", "--steps", "2"],
            "small-g16": ["--size", "small", "--group_size", "16", "--prompts", "1", "--steps", "2"],
            "small-224px-g8": ["--size", "small", "--image_size", "224", "--group_size", "8", "--prompts", "1"]
            + ["--steps", "2"],
            "small-g8-checkpointing": ["--size", "small", "--group_size", "8", "--prompts", "1", "--steps", "2"]
            + ["--gradient_checkpointing", "true"],
        },
    },
    "gpu": {
        "common": ["--sections", "[grpo]", "--size", "small", "--group_size", "8", "--prompts", "4", "--steps", "5"],
        "rows": {
            f"small-{q}-{'gc' if gc else 'nogc'}": [
                "--precision",
                "bf16",
                "--quantization",
                q,
                "--gradient_checkpointing",
                str(gc).lower(),
            ]
            for q in ("none", "4bit")
            for gc in (False, True)
        }
        # Mining at a 7B model's precision: PGD against a bare forward+backward, the default mining config's
        # sample-steps, and mixed image sizes in one batch against one size.
        | {"mining-bf16": ["--sections", "[pgd,mining,mine_sizes]", "--precision", "bf16", "--quantization", "none"]}
        # The 7B recipes' trainer precision: bf16-mixed (fp32 adapters and AdamW state) against bf16-true and fp32,
        # step time and CUDA peak memory, in 4-bit with gradient checkpointing as the recipes train.
        | {
            "precision-4bit-gc": ["--sections", "[precision]", "--precision", "bf16", "--quantization", "4bit"]
            + ["--gradient_checkpointing", "true"]
        },
    },
}


@dataclass
class SweepConfig:
    """Run the GRPO step benchmark over a preset grid and print one table."""

    preset: Literal["cpu", "gpu"] = "cpu"
    """which grid ("cpu": sizes, G and prompt length on the CPU; "gpu": bf16 / 4-bit, checkpointing on and off
    at `--size small`)."""
    out: str = "runs/bench/sweep"
    """folder of the runs' JSON (one file per row) and of `sweep.md`, the table."""
    only: list[str] | None = None
    """run just these rows of the preset (None: all)."""


def run_row(name: str, args: list[str], out: Path) -> dict:
    """One `bench` run in a child process (its own peak memory); returns its JSON."""
    path = out / f"{name}.json"
    subprocess.run([sys.executable, "-m", "mbpo_lit", "bench", *args, "--out", str(path)], check=True)
    return json.loads(path.read_text())


def table(results: dict[str, dict]) -> str:
    """Markdown: the GRPO step rows (settings, step time of each side, the ratios, peak memory), then the mining
    rows, then the precision rows."""
    steps = {k: r for k, r in results.items() if "step_s" in r["mbpo_lit"]}
    precision = {k: r for k, r in results.items() if "bf16-mixed" in r.get("precision", {})}
    mining = {k: r for k, r in results.items() if k not in steps and k not in precision}
    tables = (step_table(steps), mining_table(mining), precision_table(precision))
    return "\n\n".join(t for t, rows in zip(tables, (steps, mining, precision)) if rows)


def precision_table(results: dict[str, dict]) -> str:
    """Markdown: per precision row and trainer precision, the step time, the peak memory and the trained dtypes,
    and bf16-mixed against bf16-true."""
    lines = ["| run | trainer precision | step s (min-max) | peak MB | trained dtypes | bf16-mixed / bf16-true |"]
    lines.append("|" + " --- |" * 6)
    for name, r in results.items():
        prec = r["precision"]
        vs = prec["bf16_mixed_vs_bf16_true"]
        for mode in ("fp32", "bf16-true", "bf16-mixed"):
            m = prec[mode]
            ratio = f"{vs['step_time']:.2f}x time, {vs['peak_memory']:.2f}x memory" if mode == "bf16-mixed" else ""
            lines.append(
                f"| {name} | {m['trainer_precision']} | {m['step_s']:.3f} ({m['step_s_min']:.3f}-{m['step_s_max']:.3f})"
                f" | {m['peak_memory_mb']:,.0f} | {', '.join(m['trainable_dtypes'])} | {ratio} |"
            )
    return "\n".join(lines)


def mining_table(results: dict[str, dict]) -> str:
    """Markdown: per mining row, PGD's time against a bare forward+backward, the default config's images/s and
    sample-step efficiency, and mixed sizes against one size."""
    lines = [
        "| run | precision | PGD / bare fwd+bwd (fixed steps) | default config images/s | needed / executed "
        "sample-steps | default config PGD / bare fwd+bwd | mixed sizes / one size |",
        "|" + " --- |" * 7,
    ]
    for name, r in results.items():
        pgd, mining, sizes = r["pgd"], r["mining"], r["mine_sizes"]

        def cell(d, k, fmt="{:.2f}"):
            return fmt.format(d[k]) if k in d else "-"

        lines.append(
            f"| {name} | {r['config']['precision']} | {cell(pgd, 'overhead_ratio')} | "
            f"{cell(mining, 'images_per_s', '{:.1f}')} | {cell(mining, 'efficiency')} | "
            f"{cell(mining, 'pgd_vs_bare_forward_backward')} | {cell(sizes, 'mixed_vs_one_size_throughput')} |"
        )
    return "\n".join(lines)


def step_table(results: dict[str, dict]) -> str:
    """Markdown: per GRPO row its settings, step time of each side, the ratios and the peak memory."""
    head = (
        "| run | G | prompts x tokens | checkpointing | shared s | row-wise s | TRL s | shared / row-wise "
        "| shared / TRL | images encoded per distinct image (shared, TRL) | peak MB (shared, row-wise, TRL) |"
    )
    lines = [head, "|" + " --- |" * 11]
    for name, r in results.items():
        c, fast, row, trl = r["config"], r["mbpo_lit"], r["rowwise"], r["trl"]
        trl_s = f"{trl['step_s']:.3f}" if "step_s" in trl else "-"
        vs_trl = f"{fast['step_s'] / trl['step_s']:.2f}x" if "step_s" in trl else "-"
        trl_img = f"{r['ratios']['trl_images_encoded_per_distinct_image']:.0f}" if "step_s" in trl else "-"
        trl_mb = f"{trl['peak_memory_mb']:,.0f}" if "step_s" in trl else "-"
        lines.append(
            f"| {name} | {c['group_size']} | {c['prompts']} x {r['prompt_tokens']} | "
            f"{'on' if c['gradient_checkpointing'] else 'off'} | {fast['step_s']:.3f} | {row['step_s']:.3f} | "
            f"{trl_s} | {fast['step_s'] / row['step_s']:.2f}x | {vs_trl} | "
            f"{r['ratios']['images_encoded_per_distinct_image']:.0f}, {trl_img} | "
            f"{fast['peak_memory_mb']:,.0f}, {row['peak_memory_mb']:,.0f}, {trl_mb} |"
        )
    return "\n".join(lines)


def sweep(cfg: SweepConfig) -> dict[str, dict]:
    """Run the rows of `cfg.preset` (or `cfg.only` of them), write their JSON and `sweep.md`, print the table."""
    preset = PRESETS[cfg.preset]
    if unknown := set(cfg.only or ()) - set(preset["rows"]):
        raise SystemExit(
            f"--only names rows not in preset {cfg.preset!r}: {sorted(unknown)}; rows: {list(preset['rows'])}"
        )
    rows = {k: v for k, v in preset["rows"].items() if cfg.only is None or k in cfg.only}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {name: run_row(name, preset["common"] + args, out) for name, args in rows.items()}
    text = table(results)
    (out / "sweep.md").write_text(text + "\n")
    print(text)
    return results


def main(argv: list[str] | None = None) -> dict[str, dict]:
    from mbpo_lit import cli

    return cli.run(SweepConfig, sweep, argv)


if __name__ == "__main__":
    main()
