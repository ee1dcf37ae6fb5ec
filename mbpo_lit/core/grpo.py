"""The GRPO objective in plain torch: group-relative advantages and the clipped surrogate with a KL penalty.

MBPO trains one Group Relative Policy Optimization objective over two streams (Liu et al., arXiv 2506.08022): online
groups of G completions sampled from the policy and scored by verified rewards, and offline preference pairs
entering as groups of two whose chosen answer gets reward 2 and rejected answer 0. Everything here works on
per-token tensors [sequences, tokens] and knows nothing of models or Lightning.

Aggregation variants (how per-token terms become one number), named as in the papers and in TRL:
- "grpo":    mean over each sequence's tokens, then mean over sequences (DeepSeekMath);
- "bnpo":    sum over the tokens of this (micro-)batch / its token count (TRL's batch-normalised variant);
- "dapo":    sum over the tokens / the token count of the whole batch one optimizer step learns from: every
             micro-batch of the accumulation window, every rank (DAPO's token-level loss). Only the caller knows
             that count (`normalizer`); without it "dapo" equals "bnpo" on the batch given;
- "dr_grpo": sum over all tokens / (sequences x max_completion_tokens), a constant normaliser (Dr. GRPO). Dr. GRPO
             also drops the std scaling of advantages (`group_advantages(scale_std=False)`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["grpo", "bnpo", "dapo", "dr_grpo"]
AGGREGATIONS: tuple[str, ...] = ("grpo", "bnpo", "dapo", "dr_grpo")


def group_advantages(rewards: torch.Tensor, scale_std: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """Advantages within groups: reward minus the group mean, optionally divided by the group std.

    `rewards` is [groups, G] (one row per prompt). The std is torch's unbiased std, as in DeepSeekMath and
    TRL; Dr. GRPO argues for `scale_std=False`, which does not favour groups with little reward spread.
    A group whose rewards are all equal gets zero advantages (it carries no learning signal).
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [groups, G], got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_std or rewards.shape[1] < 2:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(policy || reference): exp(r) - r - 1 with r = ref_logp - logp (>= 0)."""
    r = ref_logp - logp
    return torch.exp(r) - r - 1


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    how: Aggregation,
    max_tokens: int | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Reduce [sequences, tokens] terms over the completion `mask` to a scalar (see module docstring).

    `max_tokens` is "dr_grpo"'s completion budget (default: the tensor's width). `normalizer` is "dapo"'s token
    count of the whole optimizer batch (default: this batch's); the other variants refuse it.
    """
    if normalizer is not None and how != "dapo":
        raise ValueError(f"normalizer is the token count of a 'dapo' batch; aggregation={how!r} takes none")
    mask = mask.to(per_token.dtype)
    if how == "grpo":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if how in ("bnpo", "dapo"):
        total = mask.sum().clamp(min=1) if normalizer is None else normalizer
        return (per_token * mask).sum() / total
    if how == "dr_grpo":
        width = max_tokens if max_tokens is not None else per_token.shape[1]
        return (per_token * mask).sum() / (per_token.shape[0] * width)
    raise ValueError(f"aggregation={how!r} is not one of {list(AGGREGATIONS)}")


@dataclass
class LossParts:
    """The loss and what the training log shows about it."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    clip_fraction: torch.Tensor
    ratio_mean: torch.Tensor


def clipped_tokens(ratio: torch.Tensor, advantages: torch.Tensor, eps_low: float, eps_high: float) -> torch.Tensor:
    """Bool [sequences, tokens]: where the surrogate's min picks the clipped term (no gradient flows there).
    `advantages` is [sequences]."""
    adv = advantages.unsqueeze(1).to(ratio.dtype)
    return torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv < ratio * adv


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None = None,
    *,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: Aggregation = "grpo",
    max_tokens: int | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> LossParts:
    """Clipped importance-ratio surrogate plus beta x KL to the reference, aggregated over tokens.

    logp, old_logp, ref_logp and mask are [sequences, tokens]; advantages is [sequences] (one per sequence,
    shared by its tokens). old_logp comes from the policy that sampled the rollout; with mu = 1 inner
    iteration it equals logp.detach(), the ratio is 1 and the gradient is the plain policy gradient.
    `ref_logp` may be None only when beta == 0 (the reference pass is then skipped altogether).
    `aggregation`, `max_tokens` and `normalizer` reduce the per-token terms (see `aggregate`).
    """
    if beta != 0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp (the reference policy's log-probs)")
    adv = advantages.unsqueeze(1).to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.min(unclipped, clipped)
    policy_loss = aggregate(per_token, mask, aggregation, max_tokens, normalizer)
    kl = (
        aggregate(k3_kl(logp, ref_logp), mask, aggregation, max_tokens, normalizer)
        if ref_logp is not None
        else logp.new_zeros(())
    )
    loss = policy_loss + beta * kl if beta != 0 else policy_loss
    with torch.no_grad():
        m = mask.bool()
        was_clipped = clipped_tokens(ratio, advantages, eps_low, eps_high) & m
        clip_fraction = was_clipped.sum() / m.sum().clamp(min=1)
        ratio_mean = (ratio * m).sum() / m.sum().clamp(min=1)
    return LossParts(loss, policy_loss.detach(), kl.detach(), clip_fraction, ratio_mean)


def offline_pair_rewards(n_pairs: int, chosen: float = 2.0, rejected: float = 0.0) -> torch.Tensor:
    """Rewards of offline pairs as groups of two: [[chosen, rejected]] * n_pairs (MBPO's 2 / 0)."""
    return torch.tensor([[chosen, rejected]] * n_pairs, dtype=torch.float32)
