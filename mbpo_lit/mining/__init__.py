"""Adversarial negative mining, MBPO's offline half: settings (`config`), the miner of one chunk (`miner`) and
the job that shards, resumes, filters and summarises (`job`)."""

from mbpo_lit.mining.config import MineConfig
from mbpo_lit.mining.job import mine_pairs
from mbpo_lit.mining.miner import MinedRow, Miner, apply_iig_filter

__all__ = ["MineConfig", "Miner", "MinedRow", "apply_iig_filter", "mine_pairs"]
