"""Which mined pairs a job keeps (`MineConfig.pair_filter`): the IIG rule, on the chosen answer's Image
Information Gain or on its margin over the rejected answer's, and the prior-conflict rule on top of it.

Every filter reads the scalar columns of the candidates (`MinedRow`) only, and keeps them in their order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.mining.config import MineConfig
from mbpo_lit.mining.prior import PRIOR_COLUMNS, conflicts_with_prior


def iig_chosen(row: dict) -> float:
    """The IIG rule's default score: the chosen answer's Image Information Gain per token."""
    return row["iig_mean"]


def iig_margin(row: dict) -> float:
    """How much more the image supports the chosen answer than the rejected one, per token."""
    return row["iig_mean"] - row["iig_rejected_mean"]


def apply_iig_filter(rows: list[dict], cfg: MineConfig, score: Callable[[dict], float] = iig_chosen) -> list[dict]:
    """Keep the pairs of high or low `score`, or all (by `iig_threshold` if given, else by `iig_fraction`); ties
    are broken by source index."""
    if cfg.iig_filter == "none" or not rows:
        return rows
    high = cfg.iig_filter == "high"
    if cfg.iig_threshold is not None:
        return [r for r in rows if (score(r) >= cfg.iig_threshold) == high]
    ranked = sorted(rows, key=lambda r: (score(r), r["source_index"]), reverse=high)
    keep = {r["source_index"] for r in ranked[: max(1, round(cfg.iig_fraction * len(rows)))]}
    return [r for r in rows if r["source_index"] in keep]


def apply_pair_filter(rows: list[dict], cfg: MineConfig, vocabulary: Sequence[str] | None = None) -> list[dict]:
    """The pairs `cfg.pair_filter` keeps of `rows` (the wrong-answer candidates), in their order; `vocabulary`
    is the source's, for the verifier that compares answers."""
    needs = {"iig": (), "iig_margin": ("iig_rejected_mean",), "prior_conflict": PRIOR_COLUMNS[cfg.prior_from]}
    missing = [c for c in needs[cfg.pair_filter] if rows and c not in rows[0]]
    if missing:
        raise SettingsError(
            f"--pair_filter {cfg.pair_filter} reads the column {missing[0]!r}, which these candidates lack (mined "
            f"before it was recorded): mine them again (--overwrite true)"
        )
    if cfg.pair_filter == "iig_margin":
        return apply_iig_filter(rows, cfg, iig_margin)
    kept = apply_iig_filter(rows, cfg)
    if cfg.pair_filter == "prior_conflict":
        kept = [r for r in kept if conflicts_with_prior(r, cfg.prior_from, vocabulary)]
    return kept
