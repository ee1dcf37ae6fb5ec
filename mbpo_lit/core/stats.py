"""Means with 95% confidence intervals over seeds, for ablation summaries and plots.

The interval is the Student-t interval of the mean, mean +- t(0.975, n - 1) * s / sqrt(n), with s the
sample standard deviation (n - 1 in the denominator): with 3-5 seeds the normal interval (1.96) would be
far too narrow (t = 4.30 for 3 seeds). scipy is not a dependency, so the t quantiles come from a table for
n - 1 <= 30 and from the Cornish-Fisher expansion above it (error below 1e-4 there).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# t quantiles at 0.975 for 1..30 degrees of freedom (two-sided 95%).
_T975 = (
    12.7062,
    4.3027,
    3.1824,
    2.7764,
    2.5706,
    2.4469,
    2.3646,
    2.3060,
    2.2622,
    2.2281,
    2.2010,
    2.1788,
    2.1604,
    2.1448,
    2.1314,
    2.1199,
    2.1098,
    2.1009,
    2.0930,
    2.0860,
    2.0796,
    2.0739,
    2.0687,
    2.0639,
    2.0595,
    2.0555,
    2.0518,
    2.0484,
    2.0452,
    2.0423,
)
_Z975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95% two-sided multiplier)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass
class MeanCI:
    """Mean of n values and its 95% interval (low = high = mean for n = 1: no spread can be estimated)."""

    n: int
    mean: float
    low: float
    high: float

    @property
    def half_width(self) -> float:
        return self.high - self.mean


def mean_ci(values: Sequence[float]) -> MeanCI:
    """Mean and Student-t 95% interval of `values` (NaNs are dropped; empty gives NaN everywhere)."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(xs)
    if n == 0:
        return MeanCI(0, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return MeanCI(1, mean, mean, mean)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return MeanCI(n, mean, mean - half, mean + half)


def summarize(rows: Iterable[dict], by: Sequence[str], value: str = "value") -> list[dict]:
    """Group tidy rows by the `by` columns and give each group n_seeds, mean, ci95_low, ci95_high.

    Groups keep the order in which they first appear, so variants stay in grid order.
    """
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in by)].append(float(row[value]))
    out = []
    for key, values in groups.items():
        ci = mean_ci(values)
        out.append({**dict(zip(by, key)), "n_seeds": ci.n, "mean": ci.mean, "ci95_low": ci.low, "ci95_high": ci.high})
    return out


def paired_differences(rows: Iterable[dict], reference: str, value: str = "value") -> list[dict]:
    """Per variant and metric, the difference to `reference` paired by seed: the mean over the seeds both ran of
    (variant - reference), with its Student-t 95% interval. `rows` are tidy (variant, seed, metric, value); a
    seed only one of the two ran is left out of that pair (n_seeds says how many remained)."""
    table: dict[tuple, float] = {}
    order: dict[tuple, None] = {}
    for row in rows:
        table[(row["variant"], row["metric"], row["seed"])] = float(row[value])
        order[(row["variant"], row["metric"])] = None
    out = []
    for variant, metric in order:
        if variant == reference:
            continue
        diffs = [
            x - table[(reference, metric, seed)]
            for (v, m, seed), x in table.items()
            if (v, m) == (variant, metric) and (reference, metric, seed) in table
        ]
        ci = mean_ci(diffs)
        out.append(
            {"variant": variant, "reference": reference, "metric": metric, "n_seeds": ci.n}
            | {"mean_diff": ci.mean, "ci95_low": ci.low, "ci95_high": ci.high}
        )
    return [r for r in out if r["n_seeds"] > 0]
