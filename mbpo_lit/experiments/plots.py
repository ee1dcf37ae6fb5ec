"""`python -m mbpo_lit plots --directory DIR`: figures of an ablation directory (what `python -m mbpo_lit ablate`
writes).

Reads DIR/curves.csv (what every run logged, read back by `ablate` with `mbpo_lit.train.logged`, whichever of
CSVLogger or TensorBoardLogger the runs named), DIR/final.csv and DIR/variants.json and writes PNGs (headless,
Agg) into DIR/figures:

  curves.png         metric vs step per variant, mean over seeds with a 95% CI band
  final.png          final metrics per variant, bars with 95% CI error bars
  probes.png         the same for the probes (held-out phrasings and kinds, CHAIR, POPE F1, KL to base)
  paired.png         paired.csv: each variant minus the reference, by seed, mean and 95% CI (a forest plot)
  sweep_SWEEP.png    one per sweep with two or more variants run (epsilon, iig, negatives, stream): final
                     metrics against the sweep's x (a line for numeric x, points for categories)

The notebooks call the same functions (each returns a matplotlib Figure, built without pyplot: headless
anywhere, no global figure registry to leak, and shown inline by Jupyter when returned or `display`ed), so the
figures in the README, the notebooks and CI come from one code path. Intervals are Student-t over seeds
(core/stats.py); with one seed there is no band.

    python -m mbpo_lit plots --directory runs/ablate
    python -m mbpo_lit plots --directory runs/ablate --out figures/
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from mbpo_lit.core.stats import mean_ci

CURVE_METRICS = ("val/counter_prior_accuracy", "val/in_prior_accuracy", "online/accuracy", "loss")
FINAL_METRICS = ("counter_prior_accuracy", "in_prior_accuracy", "gap")
# The final evaluation's probes (`testbed.probes`): what the training never saw, captions, drift from the base.
PROBE_METRICS = ("heldout_phrasing_accuracy", "heldout_kinds_accuracy", "chair_i", "pope_f1", "kl_to_base")
PAIRED_METRICS = ("counter_prior_accuracy", "in_prior_accuracy", *PROBE_METRICS[:-1])


def read_rows(path: str | Path) -> list[dict]:
    """A tidy CSV as dicts, with seed/step as int and value as float."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for key, cast in (("seed", int), ("step", int), ("value", float)):
                if key in r:
                    r[key] = cast(float(r[key])) if key != "value" else float(r[key])
            rows.append(r)
    return rows


def read_variants(directory: str | Path) -> list[dict]:
    """variants.json of an ablation directory ([] if absent: sweeps are then not drawn)."""
    path = Path(directory) / "variants.json"
    return json.loads(path.read_text()) if path.is_file() else []


def _order(rows: list[dict]) -> list[str]:
    """Variants in the order they first appear (the grid's order)."""
    return list(dict.fromkeys(r["variant"] for r in rows))


def _grid(n: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list]:
    cols = min(n, 3)
    fig = Figure(figsize=(width * cols, height * math.ceil(n / cols)))
    axes = fig.subplots(math.ceil(n / cols), cols, squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_curves(
    rows: list[dict], metrics: Sequence[str] = CURVE_METRICS, variants: Sequence[str] | None = None
) -> Figure:
    """Metric vs step, one line per variant (mean over seeds) with its 95% CI band."""
    metrics = [m for m in metrics if any(r["metric"] == m for r in rows)]
    if not metrics:
        raise ValueError(f"none of the metrics {list(metrics)} is in the curves")
    variants = list(variants or _order(rows))
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        for v in variants:
            by_step: dict[int, list[float]] = defaultdict(list)
            for r in rows:
                if r["variant"] == v and r["metric"] == metric:
                    by_step[r["step"]].append(r["value"])
            if not by_step:
                continue
            steps = sorted(by_step)
            cis = [mean_ci(by_step[s]) for s in steps]
            (line,) = ax.plot(steps, [c.mean for c in cis], marker="o" if len(steps) < 12 else None, ms=3, label=v)
            if any(c.n > 1 for c in cis):
                ax.fill_between(steps, [c.low for c in cis], [c.high for c in cis], color=line.get_color(), alpha=0.2)
        ax.set_title(metric)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _final_cis(rows: list[dict], metric: str, variants: Sequence[str]) -> list:
    return [mean_ci([r["value"] for r in rows if r["variant"] == v and r["metric"] == metric]) for v in variants]


def plot_final(
    rows: list[dict], metrics: Sequence[str] = FINAL_METRICS, variants: Sequence[str] | None = None
) -> Figure:
    """Final metrics: one panel per metric, one bar per variant (mean over seeds) with 95% CI error bars."""
    variants = list(variants or _order(rows))
    metrics = [m for m in metrics if any(r["metric"] == m for r in rows)]
    fig, axes = _grid(len(metrics), width=max(4.2, 0.55 * len(variants) + 1.5))
    for ax, metric in zip(axes, metrics):
        cis = _final_cis(rows, metric, variants)
        means = [c.mean for c in cis]
        err = [[c.mean - c.low for c in cis], [c.high - c.mean for c in cis]]
        ax.bar(range(len(variants)), means, yerr=err, capsize=3, color=[f"C{i % 10}" for i in range(len(variants))])
        ax.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{metric} (n seeds: {min(c.n for c in cis)}-{max(c.n for c in cis)})", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_paired(rows: list[dict], metrics: Sequence[str] = PAIRED_METRICS) -> Figure:
    """paired.csv as a forest plot: one panel per metric, one row per variant, its mean difference from the
    reference over the seeds both ran, with the 95% interval; the zero line is "no difference"."""
    metrics = [m for m in metrics if any(r["metric"] == m for r in rows)]
    if not metrics:
        raise ValueError(f"none of the metrics {list(metrics)} is in the paired differences")
    variants = _order(rows)
    fig, axes = _grid(len(metrics), height=max(2.4, 0.45 * len(variants) + 1.2))
    for ax, metric in zip(axes, metrics):
        found = {r["variant"]: r for r in rows if r["metric"] == metric}
        ys = [i for i, v in enumerate(variants) if v in found]
        got = [found[variants[i]] for i in ys]
        mean = [float(r["mean_diff"]) for r in got]
        err = [
            [m - float(r["ci95_low"]) for m, r in zip(mean, got)],
            [float(r["ci95_high"]) - m for m, r in zip(mean, got)],
        ]
        ax.errorbar(mean, ys, xerr=err, fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1, ls="--")
        ax.set_yticks(range(len(variants)), variants, fontsize=8)
        ax.invert_yaxis()
        ref = got[0]["reference"] if got else "?"
        ax.set_title(f"{metric} - {ref} (n seeds: {min(int(r['n_seeds']) for r in got)})", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def sweep_points(variants_meta: list[dict], sweep: str) -> list[tuple[str, float | str]]:
    """(variant, x) of a sweep, sorted by x for numeric sweeps, in grid order for categorical ones."""
    points = [(v["name"], v["sweeps"][sweep]) for v in variants_meta if sweep in v.get("sweeps", {})]
    if points and all(isinstance(x, (int, float)) for _, x in points):
        points.sort(key=lambda p: p[1])
    return points


def plot_sweep(
    rows: list[dict], variants_meta: list[dict], sweep: str, metrics: Sequence[str] = FINAL_METRICS
) -> Figure:
    """Final metrics against a sweep's x (e.g. epsilon, IIG filter), mean over seeds with 95% CI error bars."""
    ran = set(_order(rows))
    points = [(v, x) for v, x in sweep_points(variants_meta, sweep) if v in ran]
    if len(points) < 2:
        raise ValueError(f"sweep {sweep!r} has {len(points)} variant(s) with results; a sweep plot needs 2 or more")
    numeric = all(isinstance(x, (int, float)) for _, x in points)
    xs = [x for _, x in points] if numeric else list(range(len(points)))
    metrics = [m for m in metrics if any(r["metric"] == m for r in rows)]
    fig, axes = _grid(len(metrics))
    for ax, metric in zip(axes, metrics):
        cis = _final_cis(rows, metric, [v for v, _ in points])
        err = [[c.mean - c.low for c in cis], [c.high - c.mean for c in cis]]
        ax.errorbar(xs, [c.mean for c in cis], yerr=err, marker="o", capsize=3, linestyle="-" if numeric else "none")
        if not numeric:
            ax.set_xticks(xs, [str(x) for _, x in points])
        ax.set_xlabel(sweep)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{sweep} sweep")
    fig.tight_layout()
    return fig


def plot_all(directory: str | Path, out: str | Path | None = None) -> list[Path]:
    """Every figure of an ablation directory, written as PNGs into `out` (default DIR/figures)."""
    directory = Path(directory)
    out = Path(out) if out else directory / "figures"
    out.mkdir(parents=True, exist_ok=True)
    curves, final = read_rows(directory / "curves.csv"), read_rows(directory / "final.csv")
    if not final:
        raise ValueError(f"{directory / 'final.csv'} has no rows: no (variant, seed) has finished yet")
    if not curves:
        raise ValueError(
            f"{directory / 'curves.csv'} has no rows though runs finished: rerun the same `python -m mbpo_lit ablate` "
            "command, which skips finished runs and reads their logs again"
        )
    figures = {"final": plot_final(final), "curves": plot_curves(curves)}
    if any(r["metric"] in PROBE_METRICS for r in final):
        figures["probes"] = plot_final(final, PROBE_METRICS)
    paired = read_rows(directory / "paired.csv") if (directory / "paired.csv").is_file() else []
    if paired:
        figures["paired"] = plot_paired(paired)
    meta = read_variants(directory)
    ran = set(_order(final))
    for sweep in dict.fromkeys(s for v in meta for s in v.get("sweeps", {})):
        if sum(v in ran for v, _ in sweep_points(meta, sweep)) >= 2:
            figures[f"sweep_{sweep}"] = plot_sweep(final, meta, sweep)
    written = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=120)
        written.append(path)
    return written


@dataclass
class PlotsConfig:
    """Write the PNG figures of an ablation directory (`python -m mbpo_lit ablate --out DIR`) and print their
    paths."""

    directory: str
    """the ablation directory (curves.csv, final.csv, variants.json)."""
    out: str | None = None
    """where the PNGs go (None: DIRECTORY/figures)."""


def plots(cfg: PlotsConfig) -> list[Path]:
    """Every figure of `cfg.directory`, written to `cfg.out`; refuses a directory that is not an ablation's."""
    if not (Path(cfg.directory) / "final.csv").is_file():
        raise FileNotFoundError(
            f"{Path(cfg.directory) / 'final.csv'} not found: is {cfg.directory} an ablation directory "
            "(python -m mbpo_lit ablate --out DIR)?"
        )
    written = plot_all(cfg.directory, cfg.out)
    for path in written:
        print(path)
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    from mbpo_lit import cli

    return cli.run(PlotsConfig, plots, argv)


if __name__ == "__main__":
    main()
