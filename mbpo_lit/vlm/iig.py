"""Image Information Gain: how much the image raises the likelihood of an answer.

    IIG(y) = log p(y | image, q) - log p(y | q without the image)        (baseline="none")
    IIG(y) = log p(y | image, q) - log p(y | neutral image, q)           (baseline="neutral")

This form is *inferred* from the paper's description (arXiv 2506.08022): its exact definition was not given,
so the baseline is an option. "none" removes the image and its placeholder tokens from the prompt; "neutral"
keeps the prompt layout identical and replaces the pixels with a uniform grey image, which isolates the image *content*
from the mere presence of image tokens. Both the sum over answer tokens and the per-token mean are returned:
the sum is the log-likelihood ratio of the whole answer, the mean does not favour long answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from PIL import Image
from transformers import ProcessorMixin

from mbpo_lit.vlm.logprobs import answer_logprobs

Baseline = Literal["none", "neutral"]


@dataclass
class IIG:
    """Image Information Gain per sample: `sum` and `mean` over answer tokens, plus both log-likelihoods."""

    sum: torch.Tensor
    mean: torch.Tensor
    logp_image: torch.Tensor
    logp_baseline: torch.Tensor


def neutral_image(like: Image.Image, level: int = 128) -> Image.Image:
    """A uniform grey image of the same size (the "neutral" baseline)."""
    return Image.new("RGB", like.size, (level, level, level))


@torch.no_grad()
def image_information_gain(
    model: torch.nn.Module,
    processor: ProcessorMixin,
    questions: Sequence[str],
    answers: Sequence[str],
    images: Sequence[Image.Image],
    baseline: Baseline = "none",
    batch_size: int = 32,
) -> IIG:
    """IIG of each answer for its (image, question), computed in batches of `batch_size`."""
    if baseline not in ("none", "neutral"):
        raise ValueError(f"baseline={baseline!r} is not one of ['none', 'neutral']")
    if not (len(questions) == len(answers) == len(images)):
        raise ValueError(
            f"{len(questions)} questions, {len(answers)} answers and {len(images)} images differ in number"
        )
    sums, lp_img, lp_base, counts = [], [], [], []
    for start in range(0, len(questions), batch_size):
        q = questions[start : start + batch_size]
        a = answers[start : start + batch_size]
        ims = images[start : start + batch_size]
        with_image, mask = answer_logprobs(model, processor, q, a, ims)
        base_images = None if baseline == "none" else [neutral_image(im) for im in ims]
        without, _ = answer_logprobs(model, processor, q, a, base_images)
        li, lb = with_image.sum(1), without.sum(1)
        lp_img.append(li.float().cpu())
        lp_base.append(lb.float().cpu())
        sums.append((li - lb).float().cpu())
        counts.append(mask.sum(1).float().cpu())
    total, n = torch.cat(sums), torch.cat(counts)
    return IIG(sum=total, mean=total / n.clamp(min=1), logp_image=torch.cat(lp_img), logp_baseline=torch.cat(lp_base))
