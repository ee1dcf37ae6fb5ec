"""The MBPO module's settings, grouped as they appear in a recipe (`model.sampling.group_size: 8`).

Each group is a small dataclass with its own checks, so a mistyped value fails when the recipe is read,
before a model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.core.rewards import Reward, shipped_rewards, with_vocabulary


@dataclass
class Sampling:
    """The online rollout.

    The sampling rule, the same in both layouts (`share_prefix` on or off) and on every checkpoint:
    - Logits processors: these settings are the only ones. Each step suppresses the image placeholder tokens,
      divides the logits by `temperature`, then keeps the `top_k` most likely tokens and the smallest set whose
      probability reaches `top_p`, in that order (transformers' own processors, in `generate`'s order). The
      checkpoint's `generation_config.json` sampling knobs (Qwen's repetition_penalty 1.05, top_k, top_p,
      temperature) are NOT applied: `generate` runs on a clean generation config.
    - End: a completion stops at the first of the generation config's end ids (Qwen2.5-VL: `<|im_end|>` and
      `<|endoftext|>`) or the tokenizer's end-of-turn token, and keeps it; a completion that reaches
      `max_new_tokens` first keeps all its tokens, sampled pad tokens included.
    - Log-probs: every log-prob the loss uses (policy, old policy, reference) is log softmax(logits / temperature)
      of the sampled token, as in TRL. top-k / top-p only truncate the draw (also as in TRL): with their
      defaults (off) the loss scores exactly the distribution the rollout was drawn from.
    """

    group_size: int = 4
    """G, completions sampled per online prompt (>= 2: a group of one has advantage 0)."""
    temperature: float = 1.0
    """divides the logits, when sampling and in every log-prob pass."""
    top_k: int = 0
    """keep only the k most likely tokens when sampling (0: off)."""
    top_p: float = 1.0
    """nucleus sampling: keep the smallest set of most likely tokens whose mass reaches top_p (1: off)."""
    max_new_tokens: int = 8
    """longest completion."""
    seed: int = 0
    """of the module's randomness, whatever ran before in the process: the fresh LoRA weights are drawn from it,
    and batch k of the run on rank r (rollout draws, dropout) from (seed, k, r), so a resumed run draws what the
    uninterrupted one drew."""
    perturbed_k: int = 0
    """how many of each online prompt's G samples are drawn from an adversarially perturbed copy of its image
    (0: off; < group_size). The copy is PGD against the current policy that pushes the ground-truth answer's
    log-likelihood down, rounded to 8 bits; all G samples are scored alike, advantages are over the whole group,
    and the loss reads every sample on the clean image (NoisyRollout's perturbed rollouts, with an adversary)."""
    perturb_epsilon: float = 32.0
    """the perturbed copy's L-inf budget, in /255 units (for perturbed_k > 0)."""
    perturb_steps: int = 4
    """PGD steps of the perturbed copy, each of 2.5 x perturb_epsilon / perturb_steps (for perturbed_k > 0)."""

    def __post_init__(self) -> None:
        self._check_perturbation()
        if self.group_size < 2:
            raise SettingsError(
                f"sampling.group_size={self.group_size}: must be >= 2 (every advantage of a group of "
                "one is 0, so the online stream would teach nothing)"
            )
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1 or self.top_k < 0:
            raise SettingsError(
                f"sampling: temperature={self.temperature} must be > 0, top_p={self.top_p} in (0, 1], "
                f"top_k={self.top_k} >= 0, max_new_tokens={self.max_new_tokens} >= 1"
            )

    def _check_perturbation(self) -> None:
        if not 0 <= self.perturbed_k < self.group_size:
            raise SettingsError(
                f"sampling.perturbed_k={self.perturbed_k}: must be >= 0 and < sampling.group_size={self.group_size} "
                "(at least one sample of each group comes from the clean image)"
            )
        if not 0 < self.perturb_epsilon <= 255 or self.perturb_steps < 1:
            raise SettingsError(
                f"sampling: perturb_epsilon={self.perturb_epsilon} must be in (0, 255] and "
                f"perturb_steps={self.perturb_steps} >= 1"
            )


@dataclass
class Loss:
    """The training objective: hybrid GRPO (MBPO), or supervised fine-tuning as a reference line."""

    kind: Literal["grpo", "sft"] = "grpo"
    """"grpo" (MBPO's hybrid GRPO, the default) or "sft": maximum likelihood of the reference answers on the same
    batches (each offline pair's chosen answer and each online prompt's ground-truth answer), with no sampling;
    its loss is the mean negative log-likelihood per answer token, at temperature 1. The GRPO settings below do
    not apply to it: "sft" refuses beta != 0 and mu != 1."""
    beta: float = 0.0
    """KL weight to the reference policy (`model.reference`: the starting policy); 0 skips the reference pass."""
    eps_low: float = 0.2
    """lower clipping range of the importance ratio."""
    eps_high: float = 0.2
    """upper clipping range of the importance ratio (DAPO's clip-higher: eps_high > eps_low)."""
    mu: int = 1
    """optimisation passes over one rollout (1: on-policy, ratio 1). The old policy's log-probs are the first
    pass's, detached: the weights have not moved yet, so no separate pass is needed."""
    scale_std: bool | None = None
    """divide advantages by the group std. Unset (None): yes, except under "dr_grpo", which is defined without
    it; setting it true together with "dr_grpo" is refused."""
    aggregation: Literal["grpo", "bnpo", "dapo", "dr_grpo"] = "grpo"
    """how per-token terms become the loss (core/grpo.py). "grpo": mean over each completion's tokens, then over
    completions; "bnpo": token mean over each batch (micro-batch under accumulation), TRL's name; "dapo": token
    mean over the whole batch of one optimizer step (all micro-batches of `optim.accumulate_grad_batches` and,
    under DDP, all ranks); "dr_grpo": token sum / (completions x sampling.max_new_tokens), no std scaling."""

    streams: Literal["joint", "separate"] = "joint"
    """how the online and offline rows share the loss (core/streams.py). "joint" (MBPO as published): one
    aggregation over all rows, so adding offline rows dilutes the online term; "separate": each stream aggregated
    over its own rows, L = L_online + offline_weight x L_offline."""
    offline_weight: float = 1.0
    """lambda, the offline term's weight under streams "separate"."""
    offline_loss: Literal["grpo", "dpo"] = "grpo"
    """the offline term: "grpo" (the pair as a group of two, rewards 2 / 0) or "dpo" (bounded: -log sigmoid of
    dpo_beta x the policy-vs-reference margin of chosen over rejected; needs streams "separate")."""
    dpo_beta: float = 0.1
    """DPO's inverse temperature, for offline_loss "dpo"."""
    offline_kl: bool = True
    """include the offline rows in the KL term (false: KL on the online rows only)."""
    offline_as: Literal["pairs", "mixed_groups"] = "pairs"
    """how an offline pair enters: "pairs" (MBPO: a group of two with the fixed rewards `rewards.chosen` /
    `rewards.rejected`) or "mixed_groups": its record (question, clean image, ground truth) also gets G online
    samples, and its chosen and rejected answers join that group; all G + 2 are scored by the online verified
    rewards, with advantages over the whole group, and count as online rows (no offline stream remains). Needs
    streams "joint" and offline_loss "grpo"."""

    def __post_init__(self) -> None:
        self._check_streams()
        if self.beta < 0 or self.eps_low < 0 or self.eps_high < 0 or self.mu < 1:
            raise SettingsError(
                f"loss: beta={self.beta}, eps_low={self.eps_low}, eps_high={self.eps_high} must be "
                f">= 0 and mu={self.mu} >= 1"
            )
        if self.kind not in ("grpo", "sft"):
            raise SettingsError(f"loss.kind={self.kind!r}: must be grpo or sft")
        if self.kind == "sft" and (self.beta != 0 or self.mu != 1):
            raise SettingsError(
                f"loss.kind=sft with loss.beta={self.beta}, loss.mu={self.mu}: supervised fine-tuning has no KL "
                "term and one pass per batch; set loss.beta 0 and loss.mu 1"
            )
        if self.aggregation not in ("grpo", "bnpo", "dapo", "dr_grpo"):
            raise SettingsError(f"loss.aggregation={self.aggregation!r}: must be one of grpo, bnpo, dapo, dr_grpo")
        if self.aggregation == "dr_grpo" and self.scale_std:
            raise SettingsError(
                "loss.aggregation=dr_grpo with loss.scale_std=true: Dr. GRPO is defined without the std "
                "scaling of advantages; leave scale_std unset (or false), or pick another aggregation"
            )

    def _check_streams(self) -> None:
        if self.offline_as not in ("pairs", "mixed_groups"):
            raise SettingsError(f"loss.offline_as={self.offline_as!r}: must be pairs or mixed_groups")
        if self.offline_as == "mixed_groups" and (self.streams != "joint" or self.offline_loss != "grpo"):
            raise SettingsError(
                f"loss.offline_as=mixed_groups with loss.streams={self.streams}, loss.offline_loss="
                f"{self.offline_loss}: mixed groups leave no offline stream; use streams joint and offline_loss grpo"
            )
        if self.streams not in ("joint", "separate") or self.offline_loss not in ("grpo", "dpo"):
            raise SettingsError(
                f"loss.streams={self.streams!r} must be joint or separate, loss.offline_loss={self.offline_loss!r} "
                "grpo or dpo"
            )
        if self.offline_loss == "dpo" and self.streams != "separate":
            raise SettingsError("loss.offline_loss=dpo needs loss.streams=separate (DPO's term is not per token)")
        if self.streams == "separate" and self.aggregation == "dapo":
            raise SettingsError(
                "loss.streams=separate with loss.aggregation=dapo: dapo normalises over every token of the step, "
                "both streams together; use bnpo for a token mean per stream"
            )
        if self.offline_weight < 0 or self.dpo_beta <= 0:
            raise SettingsError(
                f"loss: offline_weight={self.offline_weight} must be >= 0 and dpo_beta={self.dpo_beta} > 0"
            )

    def terms(self) -> dict:
        """The settings `core.streams.stream_loss` takes, by name."""
        names = ("streams", "offline_weight", "offline_loss", "offline_kl", "dpo_beta", "beta", "eps_low", "eps_high")
        return {n: getattr(self, n) for n in (*names, "aggregation")}

    @property
    def divides_by_std(self) -> bool:
        """Whether advantages are divided by their group's std: `scale_std`, or by default all but "dr_grpo"."""
        return self.aggregation != "dr_grpo" if self.scale_std is None else self.scale_std


@dataclass
class Rewards:
    """Rewards of both streams: offline pairs' fixed rewards, and the online rewards, plug-ins a recipe names by
    `class_path` (core/rewards.py)."""

    chosen: float = 2.0
    """reward of an offline pair's chosen answer (MBPO: 2)."""
    rejected: float = 0.0
    """reward of an offline pair's rejected answer (0, inferred: the paper gives the chosen one's only)."""
    functions: list[Reward] | None = None
    """the online rewards, each a `mbpo_lit.core.rewards.Reward` given by class_path and init_args (its `weight`
    among them); None: the shipped set, AccuracyReward (weight 1), FormatReward (0.5) and LengthPenalty (1,
    coef 0.1)."""
    extra: list[Reward] = field(default_factory=list)
    """rewards added to `functions` (or to the shipped set): a recipe's own, by class_path."""
    vocabulary: list[str] | None = None
    """answer words for colour / phrase answers (the first one in a completion is its answer), given to every
    reward with an unset `vocabulary`; None compares whole normalized phrases."""

    def online(self) -> list[Reward]:
        """The online rewards: `functions` (or the shipped set) then `extra`, with this vocabulary where unset."""
        chosen = shipped_rewards() if self.functions is None else list(self.functions)
        return [with_vocabulary(r, self.vocabulary) for r in [*chosen, *self.extra]]


@dataclass
class Optimization:
    """AdamW on the adapters, and its learning-rate schedule."""

    lr: float = 1e-4
    """AdamW's learning rate (the peak, after warmup)."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    max_grad_norm: float = 1.0
    """gradient clipping (by norm). Lightning refuses the Trainer's own `gradient_clip_val` under manual
    optimization (needed here for mu), so it lives on the module."""
    accumulate_grad_batches: int = 1
    """batches whose gradients are summed before one optimizer step (mu = 1 only; the Trainer's own option is
    refused under manual optimization)."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """the learning rate after warmup: "constant", "linear" decay or "cosine" decay to `min_lr_ratio` x lr at the
    run's last optimizer step (train/schedule.py). Stepped by the module after every optimizer step and saved in
    checkpoints, so a resumed run continues the same curve."""
    warmup_steps: int = 0
    """optimizer steps over which the learning rate rises linearly from lr / (warmup_steps + 1) to lr."""
    min_lr_ratio: float = 0.0
    """where "linear" and "cosine" end, as a fraction of lr."""

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0 or self.accumulate_grad_batches < 1:
            raise SettingsError(
                f"optim: lr={self.lr} and max_grad_norm={self.max_grad_norm} must be > 0, "
                f"weight_decay={self.weight_decay} >= 0, accumulate_grad_batches >= 1"
            )
        if self.schedule not in ("constant", "linear", "cosine"):
            raise SettingsError(f"optim.schedule={self.schedule!r}: must be one of constant, linear, cosine")
        if self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise SettingsError(
                f"optim: warmup_steps={self.warmup_steps} must be >= 0 and min_lr_ratio={self.min_lr_ratio} in [0, 1]"
            )
