"""One training step's rollout after scoring: the sequences, their rewards and advantages, and their streams."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

import torch

from mbpo_lit.vlm import shared_prefix as prefix

# The kinds of online rows: samples of the policy from the clean image or from its perturbed copy
# (`sampling.perturbed_k`), and an offline pair's answers in its record's group (`loss.offline_as: mixed_groups`).
SAMPLED = ("clean", "perturbed")
KINDS = (*SAMPLED, "chosen", "rejected")


@dataclass
class Scored:
    """One training batch after roll-out and scoring: one entry per sequence, in groups, each group the
    continuations of one distinct prompt. Online groups first, in prompt order: G samples per online prompt, then
    under `loss.offline_as: mixed_groups` each pair's record's G samples followed by its chosen and rejected
    answers; then the offline pairs (chosen, rejected) as groups of two."""

    records: list[dict]
    texts: list[str]
    ids: list[list[int]]  # completion token ids, ending with an end token or max_new_tokens long
    rewards: torch.Tensor  # [sequences]: composed verified reward online, chosen/rejected reward offline
    advantages: torch.Tensor  # [sequences], group-relative
    parts: dict[str, list[float]]  # the online rewards' components (accuracy, format, length), per online row
    n_online: int
    sizes: list[int]  # rows per group, in row order; a group never spans both streams
    prompts: prefix.Prompts | None = None  # the step's distinct prompts, online then offline (share_prefix)
    kinds: list[str] = field(default_factory=list)  # per online row, one of KINDS; empty: every one "clean"

    @property
    def repeats(self) -> list[int]:
        """Sequences per distinct prompt: each group's size (G or G + 2 online, 2 per offline pair)."""
        return list(self.sizes)

    @property
    def online_sizes(self) -> list[int]:
        """The sizes of the online groups (those of the first `n_online` rows)."""
        ends = list(itertools.accumulate(self.sizes))
        return self.sizes[: bisect.bisect_right(ends, self.n_online)]

    def stream(self, i: int) -> str:
        return "online" if i < self.n_online else "offline"

    def group(self, i: int) -> int:
        """Index of sequence i's group: online groups first, then offline pairs."""
        return bisect.bisect_right(list(itertools.accumulate(self.sizes)), i)

    def online_rows(self, *kinds: str) -> list[int]:
        """Indices of the online rows of the given kinds (`KINDS`), or of every online row when none is given."""
        own = self.kinds or ["clean"] * self.n_online
        return [i for i, kind in enumerate(own) if not kinds or kind in kinds]
