"""How far a trained policy has moved from its reference (the starting policy) on a set of prompts.

GRPO's loss holds the policy near the reference with a per-token KL estimate on the tokens it sampled; an
evaluation wants the exact quantity on fixed prompts instead. `sequence_kl` teacher-forces a given answer per
prompt (usually the policy's own greedy answer) and sums, over the answer's tokens, the full-vocabulary

    KL(pi(. | prefix) || ref(. | prefix)) = sum_v pi(v) (log pi(v) - log ref(v)),

both at temperature 1. Along the policy's greedy answer this is the divergence where the policy's answers
actually go, and it is exact (no sampling), so two runs can be compared on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
from mbpo_lit.vlm.policy import reference_mode


def _answer_logits(model: torch.nn.Module, batch, mask: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the vocabulary at every answer position ([batch, width, vocab])."""
    width = mask.shape[1] - int(mask.any(0).nonzero().min())
    logits = model(**batch, logits_to_keep=width + 1, use_cache=False).logits[:, :-1]
    return F.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def sequence_kl(
    model: torch.nn.Module,
    processor,
    questions: Sequence[str],
    images: Sequence,
    answers: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """KL(policy || reference) summed over each answer's tokens (end token included), one value per prompt
    ([prompts]). The reference is what `reference_mode` gives: the adapters disabled, or the starting adapter of a
    fit that began from one. A model without adapters is its own reference (every value 0)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = processor.tokenizer.pad_token_id
    out = []
    for start in range(0, len(questions), batch_size):
        end = start + batch_size
        batch = encode_prompts(processor, questions[start:end], images[start:end])
        batch, mask = append_completions(batch, answer_token_ids(processor, answers[start:end]), pad)
        batch, mask = batch.to(device), mask.to(device)
        logp = _answer_logits(model, batch, mask)
        with reference_mode(model) as ref:
            ref_logp = _answer_logits(ref, batch, mask)
        per_token = (logp.exp() * (logp - ref_logp)).sum(-1)  # [batch, width]
        out.append((per_token * mask[:, -per_token.shape[1] :]).sum(1).cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0)
