"""Per-token log-probabilities of completions given prompts, without full-vocabulary prompt logits.

GRPO, PGD mining and Image Information Gain all need log p(completion | prompt). The [batch x tokens x
vocab] logits tensor dominates memory for a 151k vocabulary (Qwen's), so only the completion
positions' logits are computed (`logits_to_keep`) and the log-softmax is taken as gather - logsumexp.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from transformers import BatchFeature, ProcessorMixin

from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets], computed without materialising the log-softmax."""
    logits = logits.float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class CompletionScores(NamedTuple):
    """What one teacher-forced pass tells about each completion (see `completion_scores`)."""

    logp: torch.Tensor  # [batch, width] per-token log-probs, 0 outside the completion
    greedy: torch.Tensor  # [batch] every completion token is the argmax given its prefix
    margin: torch.Tensor | None  # [batch] the smallest lead, in logits, of a completion token over the best other


def completion_scores(
    model: torch.nn.Module,
    batch: BatchFeature,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    margins: bool = False,
) -> CompletionScores:
    """Log-probs of the completion tokens in `batch` (built by `chat.append_completions`), whether greedy
    decoding would reproduce each completion (every token is the argmax given its prefix), and, with `margins`,
    by what margin (a copy of the completion logits: off for the training passes over large vocabularies).

    The log-probs are a [batch, width] tensor aligned with the last `width` positions of `input_ids` (the
    completion block); entries outside `completion_mask` are 0. The greedy flag and the margin cost nothing
    extra and tell PGD, without generating, whether the model still gives the ground-truth answer.
    """
    columns = completion_mask.any(0).nonzero()
    if len(columns) == 0:
        n, device = completion_mask.shape[0], completion_mask.device
        inf = torch.full((n,), float("inf"), device=device)
        return CompletionScores(torch.zeros(n, 0, device=device), torch.ones(n, dtype=torch.bool), inf)
    width = completion_mask.shape[1] - int(columns.min())  # the completion block is the last `width` columns
    inputs = {k: v for k, v in batch.items()}
    # Logits at position t predict token t+1: keep width+1 positions, drop the last.
    out = model(**inputs, logits_to_keep=width + 1, use_cache=False)
    logits = out.logits[:, :-1]
    targets = batch["input_ids"][:, -width:]
    mask = completion_mask[:, -width:]
    greedy = ((logits.argmax(-1) == targets) | ~mask).all(1)
    if not margins:
        return CompletionScores(token_logprobs(logits, targets, temperature) * mask, greedy, None)
    with torch.no_grad():
        lead = logits.float()
        target = lead.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        other = lead.scatter(-1, targets.unsqueeze(-1), float("-inf")).amax(-1)
        margin = torch.where(mask, target - other, torch.full_like(target, float("inf"))).amin(1)
    return CompletionScores(token_logprobs(logits, targets, temperature) * mask, greedy, margin)


def completion_logprobs(
    model: torch.nn.Module,
    batch: BatchFeature,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs of the completions (see `completion_scores`)."""
    return completion_scores(model, batch, completion_mask, temperature)[0]


def answer_logprobs(
    model: torch.nn.Module,
    processor: ProcessorMixin,
    questions: Sequence[str],
    answers: Sequence[str],
    images: Sequence | None,
    pixel_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log p(answer | image, question) per token, for a batch of strings.

    `images=None` scores the answers without any image. `pixel_values` replaces the processor's pixels
    (PGD passes perturbed, differentiable ones). Returns (per-token log-probs, mask), both [batch, width].
    """
    device = next(model.parameters()).device
    batch = encode_prompts(processor, questions, images)
    pad = processor.tokenizer.pad_token_id
    batch, mask = append_completions(batch, answer_token_ids(processor, answers), pad)
    batch = batch.to(device)
    if pixel_values is not None:
        batch["pixel_values"] = pixel_values
    lp = completion_logprobs(model, batch, mask.to(device))
    width = lp.shape[1]
    return lp, mask[:, -width:].to(device)
