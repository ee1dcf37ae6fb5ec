"""Adversarial negative mining, MBPO's offline half: settings (`config`), the miner of one chunk (`miner`), the
model's answer without visual evidence (`prior`), the pair filters (`filters`) and the job that shards, resumes,
filters and summarises (`job`)."""

from mbpo_lit.mining.config import MineConfig
from mbpo_lit.mining.filters import apply_iig_filter, apply_pair_filter
from mbpo_lit.mining.job import mine_pairs
from mbpo_lit.mining.miner import MinedRow, Miner

__all__ = ["MineConfig", "Miner", "MinedRow", "apply_iig_filter", "apply_pair_filter", "mine_pairs"]
