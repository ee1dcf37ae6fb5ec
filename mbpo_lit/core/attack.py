"""Image perturbations for negative mining: adversarial PGD and the noise baselines, in plain torch.

All act on raw images ([batch, 3, H, W], values in [0, 1], see codec.py) and return perturbed raw images
inside the same budget: an L-inf ball of radius `epsilon` (in [0, 1] units; pass 8 / 255 for "8/255"),
clamped to [0, 1]. PGD *minimises* the log-likelihood of the ground-truth answer, so that the model, with
the visual evidence suppressed, falls back on its language prior (MBPO step 1). The baselines calibrate
what mere noise of the same size does, which the paper's reviewers asked for:

- "uniform":   delta ~ U(-epsilon, epsilon) per pixel;
- "gaussian":  delta ~ N(0, epsilon^2), clipped to the same L-inf ball;
- "diffusion": POVID-style forward diffusion x_t = sqrt(abar_t) x + sqrt(1 - abar_t) noise in [-1, 1]
  space (linear beta schedule over 1000 steps), with the step t as the knob; not bounded by epsilon;
- "none":      the clean image (plain sampling baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Method = Literal["pgd", "uniform", "gaussian", "diffusion", "none"]
METHODS = ("pgd", "uniform", "gaussian", "diffusion", "none")


@dataclass
class AttackResult:
    """Perturbed images and, per sample, the steps used and the objective before and after."""

    images: torch.Tensor
    steps_used: torch.Tensor
    logp_before: torch.Tensor
    logp_after: torch.Tensor
    trace: list[torch.Tensor]  # objective (per sample) after each step, for plots


def project(raw: torch.Tensor, delta: torch.Tensor, epsilon: float, norm: str = "linf") -> torch.Tensor:
    """Project `delta` onto the epsilon ball (L-inf or L2 per image) and keep raw + delta in [0, 1]."""
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    elif norm == "l2":
        flat = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        delta = delta * (epsilon / flat).clamp(max=1.0).view(-1, *[1] * (delta.dim() - 1))
    else:
        raise ValueError(f"norm={norm!r} is not one of ['linf', 'l2']")
    return (raw + delta).clamp(0, 1) - raw


def pgd(
    objective: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    raw: torch.Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    random_start: bool = True,
    norm: str = "linf",
    early_stop: bool = True,
    generator: torch.Generator | None = None,
    valid: torch.Tensor | None = None,
) -> AttackResult:
    """Projected gradient descent on `objective` within the epsilon ball around `raw`.

    `valid` ([batch, 1, H, W], 1 inside each image) marks the pixels of a batch of images of mixed sizes padded
    to one (`codec.pad_stack`): the padding never moves (no random start, and the objective gives it no
    gradient), so it adds nothing to an L2 norm.

    `objective(images, index)` is called with the images of the samples at `index` (positions in the batch) and
    returns, for those samples, (value to minimise, bool "attack not yet successful"). With `early_stop`, a
    sample leaves the batch once it is successful (its flag is False): it is neither run forward nor backward
    again, so the attack costs the steps each sample needs, not the slowest sample's steps for all. Its
    `steps_used` is the step at which it succeeded, and its image and value stay those of that step.
    """
    raw = raw.detach()
    delta = torch.zeros_like(raw)
    if random_start:
        noise = torch.rand(raw.shape, generator=generator, device="cpu").to(raw) * 2 - 1
        delta = project(raw, noise * epsilon * (1 if valid is None else valid.to(raw)), epsilon, norm)
    n = raw.shape[0]
    active = torch.arange(n, device=raw.device)  # the samples still attacked
    steps_used = torch.full((n,), steps, dtype=torch.long)
    value_now = torch.zeros(n)
    trace: list[torch.Tensor] = []
    before = None
    for step in range(steps + 1):
        part = delta[active].requires_grad_(True)
        value, not_done = objective(raw[active] + part, active)
        value_now[active.cpu()] = value.detach().float().cpu()
        if before is None:
            before = value_now.clone()
        trace.append(value_now.clone())
        keep = not_done.to(raw.device) if early_stop else torch.ones_like(active, dtype=torch.bool)
        steps_used[active[~keep].cpu()] = step
        if step == steps or not keep.any():
            break
        (grad,) = torch.autograd.grad(value[keep].sum(), part)
        with torch.no_grad():
            grad, moving = grad[keep], active[keep]
            if norm == "linf":
                move = grad.sign()
            else:
                move = grad / grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
            delta[moving] = project(raw[moving], delta[moving] - step_size * move, epsilon, norm)
        active = moving
    return AttackResult((raw + delta).detach(), steps_used, before, trace[-1], trace)


def to_uint8_grid(images: torch.Tensor, raw: torch.Tensor, epsilon: float, norm: str = "linf") -> torch.Tensor:
    """`images` moved onto the 8-bit grid (multiples of 1/255), still inside the epsilon ball around `raw`.

    A perturbed image is saved as an 8-bit picture, so mining answers and scores the rounded image, which is
    exactly the one written to disk. `raw` must be on the grid itself (a decoded 8-bit picture is, up to float
    error, and is rounded here). Each pixel's offset from `raw` is rounded to whole 1/255 steps; where that
    would leave the ball (L-inf: an offset above epsilon; L2: a norm above epsilon), it is rounded toward zero
    instead, which never grows an offset.
    """
    base = (raw * 255).round()
    steps = (images * 255 - base).round()
    if norm == "linf":
        limit = torch.floor(torch.tensor(epsilon * 255 + 1e-3))
        steps = torch.minimum(steps.abs(), limit.to(steps)) * steps.sign()
    else:
        outside = steps.flatten(1).norm(dim=1) > epsilon * 255 + 1e-3
        toward_zero = (images * 255 - base).trunc()
        steps = torch.where(outside.view(-1, *[1] * (steps.dim() - 1)), toward_zero, steps)
    return ((base + steps).clamp(0, 255) / 255).to(images.dtype)


def diffusion_noise(
    raw: torch.Tensor, t: int, generator: torch.Generator | None = None, total: int = 1000
) -> torch.Tensor:
    """Forward diffusion of step t (DDPM linear schedule, beta 1e-4 .. 0.02), as POVID corrupts images."""
    if not 0 <= t < total:
        raise ValueError(f"diffusion step t={t} is outside [0, {total})")
    betas = torch.linspace(1e-4, 0.02, total, dtype=torch.float64)
    abar = torch.cumprod(1 - betas, 0)[t].item()
    noise = torch.randn(raw.shape, generator=generator, device="cpu").to(raw)
    x = raw * 2 - 1
    return ((abar**0.5 * x + (1 - abar) ** 0.5 * noise + 1) / 2).clamp(0, 1)


def random_perturbation(
    method: str, raw: torch.Tensor, epsilon: float, diffusion_t: int = 200, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The non-adversarial perturbations ("uniform", "gaussian", "diffusion", "none") of raw images."""
    if method == "none":
        return raw.clone()
    if method == "uniform":
        delta = (torch.rand(raw.shape, generator=generator, device="cpu").to(raw) * 2 - 1) * epsilon
        return raw + project(raw, delta, epsilon)
    if method == "gaussian":
        delta = torch.randn(raw.shape, generator=generator, device="cpu").to(raw) * epsilon
        return raw + project(raw, delta, epsilon)
    if method == "diffusion":
        return diffusion_noise(raw, diffusion_t, generator)
    raise ValueError(f"method={method!r} is not one of {list(METHODS)}")
