"""What a training step logs: the loss's parts, each stream's rewards, every online reward's parts, the share of
online groups that teach nothing, the optimizer's state (learning rate, gradient norm) and the step's cost.

Every key is listed in docs/reference/metrics.md; `PROGRESS_BAR` are the ones the progress bar shows.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Sequence

import torch

from mbpo_lit.core.grpo import LossParts
from mbpo_lit.train.scored import SAMPLED, Scored

# Shown in the progress bar as well as logged: whether the policy is learning (reward, accuracy) and how far it
# has moved from the reference (kl).
PROGRESS_BAR = ("online/reward_mean", "online/accuracy", "kl")


def zero_signal_share(rewards: torch.Tensor, sizes: int | Sequence[int]) -> float:
    """The share of online groups whose rewards all tie: their advantages are all 0, so they teach nothing.
    `sizes`: each group's size, in row order, or one size for all."""
    if isinstance(sizes, int):
        sizes = [sizes] * (len(rewards) // sizes)
    ties = [bool(g.max() == g.min()) for g in torch.split(rewards, list(sizes))]
    return torch.tensor(ties).float().mean().item()


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory of the run so far, in GB: allocated CUDA memory on a GPU, else the process's peak resident
    set (which counts everything the process holds, not only tensors)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux, bytes on macOS
    return kb / (1e9 if sys.platform == "darwin" else 1e6)


def step_metrics(out: LossParts, scored: Scored, mask: torch.Tensor, seconds: float) -> dict[str, float]:
    """The logs of one GRPO step (the optimizer's and the memory's are added by the module)."""
    n = scored.n_online
    tokens = mask.sum().item()
    logs = {
        "loss": out.loss.item(),
        "kl": out.kl.item(),
        "clip_fraction": out.clip_fraction.item(),
        "completion_length": mask.sum(1).float().mean().item(),
        "perf/step_seconds": seconds,
        "perf/completion_tokens_per_s": tokens / max(seconds, 1e-9),
    }
    # The online rewards are the policy's own samples' (clean or perturbed image): a mixed group's pair answers
    # are the pair's, not the policy's.
    drawn = scored.online_rows(*SAMPLED)
    for stream, r in (("online", scored.rewards[drawn]), ("offline", scored.rewards[n:])):
        if len(r):
            logs[f"{stream}/reward_mean"] = r.mean().item()
            logs[f"{stream}/reward_std"] = r.std().item() if len(r) > 1 else 0.0
    if n:
        for key, values in scored.parts.items():
            logs[f"online/reward_{key}"] = sum(values[i] for i in drawn) / len(drawn)
        if "accuracy" in scored.parts:
            logs["online/accuracy"] = logs["online/reward_accuracy"]
            perturbed = scored.online_rows("perturbed")
            if perturbed:
                logs["online/perturbed_accuracy"] = sum(scored.parts["accuracy"][i] for i in perturbed) / len(perturbed)
        logs["online/zero_signal_groups"] = zero_signal_share(scored.rewards[:n], scored.online_sizes)
    return logs


def loss_scale(trainer) -> float:
    """The factor fp16-mixed's gradient scaler multiplies the loss, and so the gradients, by until the optimizer
    step unscales them; 1.0 under every other precision (and without a trainer)."""
    scaler = getattr(getattr(trainer, "precision_plugin", None), "scaler", None)
    return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0


def gradient_norm(parameters: list[torch.nn.Parameter]) -> float:
    """The total 2-norm of the parameters' gradients as they are (before clipping; 0 when none has a gradient):
    under fp16-mixed, the loss-scaled ones (divide by `loss_scale`); under FSDP, this rank's shard."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])).item()
