"""Per-token log-probabilities of completions given prompts, without full-vocabulary prompt logits.

GRPO, PGD mining and Image Information Gain all need log p(completion | prompt). The [batch x tokens x
vocab] logits tensor dominates memory for a 151k vocabulary (Qwen's), so only the completion
positions' logits are computed (`logits_to_keep`) and the log-softmax is taken as gather - logsumexp.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import BatchFeature, ProcessorMixin

from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature)[targets], computed without materialising the log-softmax."""
    logits = logits.float() / temperature
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_scores(
    model: torch.nn.Module,
    batch: BatchFeature,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens in `batch` (built by `chat.append_completions`), and whether
    greedy decoding would reproduce each completion (every token is the argmax given its prefix).

    The log-probs are a [batch, width] tensor aligned with the last `width` positions of `input_ids` (the
    completion block); entries outside `completion_mask` are 0. The greedy flag costs nothing extra and
    tells PGD, without generating, whether the model still gives the ground-truth answer.
    """
    columns = completion_mask.any(0).nonzero()
    if len(columns) == 0:
        n = completion_mask.shape[0]
        return torch.zeros(n, 0, device=completion_mask.device), torch.ones(n, dtype=torch.bool)
    width = completion_mask.shape[1] - int(columns.min())  # the completion block is the last `width` columns
    inputs = {k: v for k, v in batch.items()}
    # Logits at position t predict token t+1: keep width+1 positions, drop the last.
    out = model(**inputs, logits_to_keep=width + 1, use_cache=False)
    logits = out.logits[:, :-1]
    targets = batch["input_ids"][:, -width:]
    mask = completion_mask[:, -width:]
    greedy = ((logits.argmax(-1) == targets) | ~mask).all(1)
    return token_logprobs(logits, targets, temperature) * mask, greedy


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
