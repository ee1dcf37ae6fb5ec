"""One training step's rollout after scoring: the sequences, their rewards and advantages, and their streams."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mbpo_lit.vlm import shared_prefix as prefix


@dataclass
class Scored:
    """One training batch after roll-out and scoring: one entry per sequence, online rows first (G per prompt,
    in prompt order), then offline rows (chosen, rejected per pair)."""

    records: list[dict]
    texts: list[str]
    ids: list[list[int]]  # completion token ids, ending with an end token or max_new_tokens long
    rewards: torch.Tensor  # [sequences]: composed verified reward online, chosen/rejected reward offline
    advantages: torch.Tensor  # [sequences], group-relative
    parts: dict[str, list[float]]  # the online rewards' components (accuracy, format, length)
    n_online: int
    group_size: int
    prompts: prefix.Prompts | None = None  # the step's distinct prompts, online then offline (share_prefix)

    @property
    def repeats(self) -> list[int]:
        """Sequences per distinct prompt: G for each online prompt, then 2 (chosen, rejected) per pair."""
        n_offline = (len(self.records) - self.n_online) // 2
        return [self.group_size] * (self.n_online // self.group_size) + [2] * n_offline

    def stream(self, i: int) -> str:
        return "online" if i < self.n_online else "offline"

    def group(self, i: int) -> int:
        """Index of sequence i's group: online prompts first, then offline pairs."""
        if i < self.n_online:
            return i // self.group_size
        return self.n_online // self.group_size + (i - self.n_online) // 2
