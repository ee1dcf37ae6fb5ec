"""How much a metric moved between two models on the same records: paired bootstrap intervals."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from mbpo_lit.data.sources import Record
from mbpo_lit.evaluation.official import resample_units
from mbpo_lit.evaluation.scoring import score, summarize


def paired_change(
    records: Sequence[Record],
    before: Sequence[str],
    after: Sequence[str],
    vocabulary: Sequence[str] | None = None,
    mentions: Callable[[str], list[str] | None] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """How each summary metric moved from `before` to `after` (two models' predictions on the same records),
    with a 95% paired bootstrap interval of the change.

    Each of `n_boot` resamples draws records with replacement, the same draw for both models, scores it whole
    (`score`, so ratios such as F1 and CHAIR_i are recomputed, not averaged) and takes the difference; the
    interval is the 2.5th to 97.5th percentile of those differences. Pairing is what makes a small change
    decidable: both models fail on the same hard records, so the change varies far less than either score.
    results/chair.md shows it resolving CHAIR_i changes of under 0.01 on world captions.

    Records that a benchmark scores together are drawn together (`official.resample_units`): an MME image's two
    questions (acc+) and an MMBench question's rotations (circular accuracy) are one unit each, and each drawn
    copy of a unit is scored as a unit of its own; every other record is a unit alone (rows are drawn).

    Returns {metric: {before, after, change, ci95_low, ci95_high}}; a metric missing from some resample (a group
    it never drew) gets NaN bounds.
    """
    if not len(records) == len(before) == len(after):
        raise ValueError(f"{len(records)} records but {len(before)} / {len(after)} predictions before / after")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    # Resamples repeat records, so each text is parsed once (the parse dominates scoring descriptions).
    mentions = functools.lru_cache(maxsize=None)(mentions) if mentions is not None else None
    start = summarize(score(records, before, vocabulary, mentions))
    end = summarize(score(records, after, vocabulary, mentions))
    draws: dict[str, list[float]] = defaultdict(list)
    rng = np.random.default_rng(seed)
    units = resample_units(records)
    for _ in range(n_boot):
        drawn = rng.integers(0, len(units), len(units))
        idx = [i for u in drawn for i in units[u]]
        copies = [k for k, u in enumerate(drawn) for _ in units[u]]  # which draw each record belongs to
        pick = [records[i] for i in idx]
        b = summarize(score(pick, [before[i] for i in idx], vocabulary, mentions, draws=copies))
        a = summarize(score(pick, [after[i] for i in idx], vocabulary, mentions, draws=copies))
        for k in a.keys() & b.keys():
            draws[k].append(a[k] - b[k])
    out = {}
    for k in start.keys() & end.keys():
        d = draws[k]
        low, high = np.percentile(d, [2.5, 97.5]) if len(d) == n_boot else (float("nan"), float("nan"))
        out[k] = {
            "before": start[k],
            "after": end[k],
            "change": end[k] - start[k],
            "ci95_low": float(low),
            "ci95_high": float(high),
        }
    return {k: out[k] for k in start if k in out}
