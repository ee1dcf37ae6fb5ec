"""Plain-text tables of evaluation results, as the commands print them."""

from __future__ import annotations

import math
from collections.abc import Sequence


def format_change(c: dict[str, float]) -> str:
    """One metric of `paired_change`: "+0.008 [+0.003, +0.013]", or "+0.008 [no interval]" where the bootstrap
    gave none (some resamples held no record the metric is computed on, so its interval is NaN)."""
    low, high = c["ci95_low"], c["ci95_high"]
    if math.isnan(low) or math.isnan(high):
        return f"{c['change']:+.3f} [no interval]"
    return f"{c['change']:+.3f} [{low:+.3f}, {high:+.3f}]"


def change_column(change: dict[str, dict[str, float]]) -> dict[str, str]:
    """`paired_change` as a table column: `format_change` per metric."""
    return {k: format_change(c) for k, c in change.items()}


def format_table(columns: dict[str, dict], metrics: Sequence[str] | None = None) -> str:
    """A plain-text table with one row per metric and one column per name (e.g. before / after); a metric a
    column lacks is shown as "-"."""
    metrics = list(metrics or dict.fromkeys(k for c in columns.values() for k in c))
    width = max([len(m) for m in metrics] + [6])
    cols = {
        name: {m: f"{c[m]:.3f}" if isinstance(c.get(m), float) else str(c.get(m, "-")) for m in metrics}
        for name, c in columns.items()
    }
    widths = {name: max([14, len(name)] + [len(v) for v in col.values()]) for name, col in cols.items()}
    lines = [" " * width + " | " + " | ".join(f"{name:>{widths[name]}}" for name in cols)]
    for m in metrics:
        lines.append(f"{m:<{width}} | " + " | ".join(f"{col[m]:>{widths[name]}}" for name, col in cols.items()))
    return "\n".join(lines)
