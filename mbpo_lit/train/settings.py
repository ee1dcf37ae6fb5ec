"""The MBPO module's settings, grouped as they appear in a recipe (`model.sampling.group_size: 8`).

Each group is a small dataclass with its own checks, so a mistyped value fails when the recipe is read,
before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


class SettingsError(ValueError):
    """An out-of-range setting, named by its recipe key (a user's mistake: one line, no traceback)."""


@dataclass
class Sampling:
    """The online rollout.

    Args:
        group_size: G, completions sampled per online prompt (>= 2: a group of one has advantage 0).
        temperature, top_p: sampling of the rollout.
        max_new_tokens: longest completion.
    """

    group_size: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8

    def __post_init__(self) -> None:
        if self.group_size < 2:
            raise SettingsError(
                f"sampling.group_size={self.group_size}: must be >= 2 (every advantage of a group of "
                "one is 0, so the online stream would teach nothing)"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            raise SettingsError(
                f"sampling: temperature={self.temperature} must be > 0, top_p={self.top_p} in (0, 1], "
                f"max_new_tokens={self.max_new_tokens} >= 1"
            )


@dataclass
class Loss:
    """The hybrid GRPO objective.

    Args:
        beta: KL weight to the reference (the adapter-disabled model); 0 skips the reference pass.
        eps_low, eps_high: clipping range of the importance ratio (DAPO's clip-higher: eps_high > eps_low).
        mu: optimisation passes over one rollout (1: on-policy, ratio 1). The old policy's log-probs are the
            first pass's, detached: the weights have not moved yet, so no separate pass is needed.
        scale_std: divide advantages by the group std (False: Dr. GRPO).
        aggregation: "grpo" (per-sequence mean), "dapo" (token mean), "dr_grpo" (constant normaliser).
    """

    beta: float = 0.0
    eps_low: float = 0.2
    eps_high: float = 0.2
    mu: int = 1
    scale_std: bool = True
    aggregation: Literal["grpo", "dapo", "dr_grpo"] = "grpo"

    def __post_init__(self) -> None:
        if self.beta < 0 or self.eps_low < 0 or self.eps_high < 0 or self.mu < 1:
            raise SettingsError(
                f"loss: beta={self.beta}, eps_low={self.eps_low}, eps_high={self.eps_high} must be "
                f">= 0 and mu={self.mu} >= 1"
            )


@dataclass
class Rewards:
    """Rewards of both streams.

    Args:
        chosen, rejected: rewards of an offline pair's chosen and rejected answer (MBPO: 2 and 0).
        format_weight: weight of the format reward of online completions (a parseable answer).
        length_coef: weight of the length penalty of online completions.
        vocabulary: answer words for colour / phrase answers (the first one in a completion is its answer);
            None compares whole normalized phrases.
    """

    chosen: float = 2.0
    rejected: float = 0.0
    format_weight: float = 0.5
    length_coef: float = 0.1
    vocabulary: list[str] | None = None


@dataclass
class Optimization:
    """AdamW on the adapters.

    Args:
        lr, weight_decay: AdamW's.
        max_grad_norm: gradient clipping (by norm).
        accumulate_grad_batches: batches whose gradients are summed before one optimizer step (mu = 1 only).
            Lightning refuses the Trainer's own `accumulate_grad_batches` and `gradient_clip_val` under manual
            optimization (needed here for mu), so both live on the module.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    accumulate_grad_batches: int = 1

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0 or self.accumulate_grad_batches < 1:
            raise SettingsError(
                f"optim: lr={self.lr} and max_grad_norm={self.max_grad_norm} must be > 0, "
                f"weight_decay={self.weight_decay} >= 0, accumulate_grad_batches >= 1"
            )
