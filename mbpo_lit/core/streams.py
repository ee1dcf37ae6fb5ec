"""The two streams of MBPO's objective weighed apart, and a bounded offline term.

`grpo_loss` over all rows at once (`loss.streams: joint`, MBPO as published) averages the online groups and the
offline pairs together: adding 8 offline rows to 16 online ones cuts the online term's weight to 2/3. With
`streams: separate` each stream is aggregated over its own rows (or tokens) and the two are summed,

    L = L_online + offline_weight x L_offline,

so adding offline pairs never rescales the online term. The offline term is either GRPO's on the pair as a group of
two (`offline_loss: grpo`: at mu = 1 a fixed-weight likelihood on the chosen answer plus unlikelihood on the
rejected one, unbounded below), or DPO's (Rafailov et al., arXiv 2305.18290), bounded:

    L_dpo = -log sigmoid(dpo_beta x [(log pi(c) - log ref(c)) - (log pi(r) - log ref(r))]),

with sequence log-probs (the sum over each answer's tokens) under the policy and the reference. `offline_kl: false`
leaves the offline rows out of the KL term (the k3 estimate on tokens the policy never sampled pushes back on the
rejected side only); under "separate" each stream's KL is aggregated over its own rows and weighed with its stream:
L = (L_online + beta KL_online) + offline_weight x (L_offline + beta KL_offline).

Rows are online first (`n_online` of them), then offline pairs as (chosen, rejected).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mbpo_lit.core.grpo import Aggregation, LossParts, aggregate, grpo_loss, k3_kl

Streams = Literal["joint", "separate"]
OfflineLoss = Literal["grpo", "dpo"]


def dpo_pair_loss(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's loss over pairs, rows alternating chosen and rejected ([2 x pairs, tokens] each): the mean over pairs
    of -log sigmoid(beta x (chosen's log-ratio - rejected's log-ratio)), log-ratios of summed token log-probs."""
    if logp.shape[0] % 2:
        raise ValueError(f"DPO needs (chosen, rejected) rows in pairs, got {logp.shape[0]} rows")
    ratio = ((logp - ref_logp) * mask.to(logp.dtype)).sum(1)
    return -F.logsigmoid(beta * (ratio[0::2] - ratio[1::2])).mean()


def stream_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    n_online: int,
    *,
    streams: Streams = "joint",
    offline_weight: float = 1.0,
    offline_loss: OfflineLoss = "grpo",
    offline_kl: bool = True,
    dpo_beta: float = 0.1,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    aggregation: Aggregation = "grpo",
    max_tokens: int | None = None,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[LossParts, dict[str, torch.Tensor]]:
    """MBPO's loss over both streams (see the module docstring): (the loss and its parts, per-stream terms for
    the logs). "joint" with the offline defaults is exactly `grpo_loss` over all rows."""
    clip = {"eps_low": eps_low, "eps_high": eps_high, "aggregation": aggregation, "max_tokens": max_tokens}
    kl_mask = mask if offline_kl else _rows(mask, n_online)
    n_off = logp.shape[0] - n_online
    if streams == "joint" and offline_loss == "grpo":
        parts = grpo_loss(logp, old_logp, advantages, mask, None, **clip, normalizer=normalizer)
        return _with_kl(parts, logp, ref_logp, kl_mask, beta, aggregation, max_tokens, normalizer), {}
    if streams == "joint":
        raise ValueError("offline_loss='dpo' needs streams='separate' (its term is not a per-token GRPO term)")
    if normalizer is not None:
        raise ValueError("streams='separate' aggregates each stream over its own rows; 'dapo' has no such count")
    on, off = slice(0, n_online), slice(n_online, None)
    zero = logp.new_zeros(())
    policy, kl = {"online": zero, "offline": zero}, {"online": zero, "offline": zero}
    if n_online:
        policy["online"] = grpo_loss(logp[on], old_logp[on], advantages[on], mask[on], **clip).loss
    if n_off and offline_loss == "grpo":
        policy["offline"] = grpo_loss(logp[off], old_logp[off], advantages[off], mask[off], **clip).loss
    elif n_off:
        if ref_logp is None:
            raise ValueError("offline_loss='dpo' needs ref_logp (the reference policy's log-probs)")
        policy["offline"] = dpo_pair_loss(logp[off], ref_logp[off], mask[off], dpo_beta)
    if beta != 0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp (the reference policy's log-probs)")
    if ref_logp is not None:
        for name, rows, n in (("online", on, n_online), ("offline", off, n_off if offline_kl else 0)):
            if n:
                kl[name] = aggregate(k3_kl(logp[rows], ref_logp[rows]), mask[rows], aggregation, max_tokens)
    # Each stream is its own term, KL included: L = (L_on + beta KL_on) + offline_weight (L_off + beta KL_off).
    policy_total = policy["online"] + offline_weight * policy["offline"]
    kl_total = kl["online"] + offline_weight * kl["offline"]
    loss = policy_total + beta * kl_total if beta != 0 else policy_total
    with torch.no_grad():  # the clipping statistics over every row, as `grpo_loss` reports them
        stats = grpo_loss(logp.detach(), old_logp, advantages, mask, **clip)
    parts = LossParts(loss, policy_total.detach(), kl_total.detach(), stats.clip_fraction, stats.ratio_mean)
    return parts, {f"{k}/policy_loss": v.detach() for k, v in policy.items()}


def _rows(mask: torch.Tensor, n: int) -> torch.Tensor:
    """`mask` with every row from `n` on zeroed (the offline rows left out)."""
    out = mask.clone()
    out[n:] = 0
    return out


def _with_kl(
    parts: LossParts,
    logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    kl_mask: torch.Tensor,
    beta: float,
    aggregation: Aggregation,
    max_tokens: int | None,
    normalizer: float | torch.Tensor | None,
) -> LossParts:
    """`parts` (a policy term) plus beta x the KL term over `kl_mask`, aggregated like the policy term."""
    if beta != 0 and ref_logp is None:
        raise ValueError("beta != 0 needs ref_logp (the reference policy's log-probs)")
    if ref_logp is None:
        return parts
    kl = aggregate(k3_kl(logp, ref_logp), kl_mask, aggregation, max_tokens, normalizer)
    loss = parts.loss + beta * kl if beta != 0 else parts.loss
    return LossParts(loss, parts.policy_loss, kl.detach(), parts.clip_fraction, parts.ratio_mean)
