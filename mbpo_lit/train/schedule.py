"""The learning-rate schedule: linear warmup, then constant, linear or cosine decay.

Under manual optimisation (the module steps its own optimizer, `mu` times per rollout) Lightning saves and restores
a configured scheduler with the checkpoint but never steps it; the module does, once per optimizer step, so the
curve is in optimizer steps: `trainer.global_step`, what `max_steps` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class LrCurve:
    """The factor on the peak learning rate at optimizer step `step` (0-based): warmup over `warmup` steps from
    1 / (warmup + 1) to 1, then `kind` ("constant", "linear", "cosine") from 1 down to `min_ratio` at step
    `total`, and `min_ratio` after it."""

    warmup: int
    total: int
    kind: str = "constant"
    min_ratio: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        done = min(1.0, (step - self.warmup) / span)
        shape = 1.0 - done if self.kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * done))
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def total_optimizer_steps(max_steps: int, stepping_batches: int | float, mu: int, accumulate: int) -> int:
    """Optimizer steps of a run: `max_steps` when set (the Trainer counts optimizer steps), else every batch's
    steps: batches x mu / accumulate (mu passes per rollout, one step per `accumulate` batches)."""
    if max_steps is not None and max_steps > 0:
        return int(max_steps)
    if not math.isfinite(stepping_batches):
        raise ValueError(
            "the learning-rate schedule needs the run's length: set trainer.max_steps (or max_epochs with a "
            "finite dataloader) when optim.schedule is linear or cosine"
        )
    return max(1, int(stepping_batches) * mu // accumulate)


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """`LambdaLR` on an `LrCurve`: the optimizer's lr is the peak lr x curve(step) after `step` scheduler steps.

    Its checkpoint holds the position on the curve, not the curve: a resumed run follows the curve of its own
    settings (the same one when the command is the same; a longer one when `max_steps` was raised to continue).
    """

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["lr_lambdas"] = [None] * len(self.lr_lambdas)  # LambdaLR restores only the entries that are set
        return state


def lr_scheduler(optimizer: torch.optim.Optimizer, curve: LrCurve) -> Schedule:
    """The run's scheduler: lr = peak lr x curve(optimizer steps taken)."""
    return Schedule(optimizer, curve)
