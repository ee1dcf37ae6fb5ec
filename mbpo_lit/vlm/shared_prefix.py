"""Shared prompt prefix: each image encoded once per step, each prompt prefilled once for all its completions.

A GRPO step scores k completions per prompt (G sampled ones online; chosen and rejected offline) in up to
three passes: generation, the policy pass, the reference pass. Laid out the straightforward way, one row per
completion with the prompt repeated, every pass re-runs the vision tower on each row's copy of the image and
the language model on each row's copy of the prompt. `python -m mbpo_lit bench` counted 68 image encodings
per step for 4 distinct images at G = 8. Here instead:

1. `encode`: the step's distinct prompts are tokenized once, and the vision tower runs once over their images.
   Its per-image output goes to every later forward as `mm_encoder_outputs`, the precomputed-features input
   of transformers' Qwen-VL and LLaVA models. This is exact because the vision tower is frozen (LoRA adapts
   the language model only), and `check_frozen_vision` enforces it.
2. `prefill`: the prompts go through the language model once, keeping the KV cache, which is then repeated
   k times per prompt. `repeat_interleave` is differentiable, so the policy pass's gradients still reach the
   adapters through the prompt's keys and values.
3. `completion_logprobs` and `sample` continue every completion from that cache.

The results equal the straightforward path's; `tests/test_prefix.py` checks the loss and the gradients for
each architecture. One difference is by design: in training mode the LoRA dropout mask of a prompt is drawn
once per prompt, not once per completion row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import BatchFeature, Cache, PreTrainedModel, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mbpo_lit.vlm.arch import Arch
from mbpo_lit.vlm.chat import append_completions, encode_prompts, pad_right
from mbpo_lit.vlm.logprobs import completion_logprobs as logprob_pass
from mbpo_lit.vlm.logprobs import token_logprobs
from mbpo_lit.vlm.policy import is_vision_parameter


@dataclass
class Prompts:
    """Distinct prompts of a step, tokenized once, with the vision tower's output for each image.

    `batch` holds the tokenized prompts without `pixel_values`; `features[i]` is image i's encoding (the
    [tokens, hidden] rows that replace its placeholder tokens).
    """

    batch: BatchFeature
    features: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return self.batch["input_ids"].shape[0]

    def take(self, rows: Sequence[int]) -> Prompts:
        """The prompts at `rows` (a row may repeat): a sub-batch that still needs no vision-tower call."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.batch["input_ids"].device)
        batch = BatchFeature({k: v[index] for k, v in self.batch.items()})
        return Prompts(batch, tuple(self.features[i] for i in index.tolist()))

    def inputs(self) -> dict:
        """Keyword arguments of a forward pass over these prompts, features in place of pixels."""
        return dict(self.batch, mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=self.features)})


def _unwrapped(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers `...ForConditionalGeneration`, peft's wrapper removed."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def core(model: PreTrainedModel | PeftModel) -> torch.nn.Module:
    """The transformers `...Model` inside a (peft-wrapped) `...ForConditionalGeneration`."""
    return _unwrapped(model).model


def checkpointing(model: PreTrainedModel | PeftModel) -> bool:
    """Whether gradient checkpointing is active now, i.e. transformers' checkpointed layers drop a KV cache."""
    base = _unwrapped(model)
    return base.is_gradient_checkpointing and base.training and torch.is_grad_enabled()


def check_frozen_vision(model: torch.nn.Module, arch: Arch) -> None:
    """Fail, naming a parameter, if the vision side trains: its output could then not be reused in a step."""
    for name, p in model.named_parameters():
        if p.requires_grad and is_vision_parameter(name, arch):
            raise ValueError(
                f"share_prefix=True reuses the vision tower's output within a step, but vision "
                f"parameter {name!r} is trainable; freeze it or set share_prefix=False"
            )


@torch.no_grad()
def encode(
    model: PreTrainedModel | PeftModel,
    processor: ProcessorMixin,
    questions: Sequence[str],
    images: Sequence,
    record_ids: Sequence | None = None,
) -> Prompts:
    """Tokenize (image, question) prompts and run the vision tower once over their images."""
    device = next(model.parameters()).device
    batch = encode_prompts(processor, questions, images, record_ids).to(device)
    pixels = batch.pop("pixel_values")
    extra = {"image_grid_thw": batch["image_grid_thw"]} if "image_grid_thw" in batch else {}
    out = core(model).get_image_features(pixel_values=pixels, return_dict=True, **extra)
    return Prompts(batch, tuple(out.pooler_output))


def _positions(model: torch.nn.Module, prompts: Prompts) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Position ids of the prompts, and of the first token after each prompt.

    Qwen-VL's M-RoPE gives image tokens 2-D positions, so text after the image continues from the largest
    position so far (`get_rope_index`). LLaVA's 1-D positions are the model's default (0, 1, ... across the
    padded row) in both layouts, so (None, None) leaves them to the model.
    """
    b = prompts.batch
    if "image_grid_thw" not in b:
        return None, None
    pos, _ = core(model).get_rope_index(
        b["input_ids"],
        mm_token_type_ids=b["mm_token_type_ids"],
        image_grid_thw=b["image_grid_thw"],
        attention_mask=b["attention_mask"],
    )
    return pos, pos.amax(dim=(0, 2)) + 1


def _next_positions(start: torch.Tensor | None, offset: int, width: int) -> torch.Tensor | None:
    """[3, rows, width] M-RoPE ids of text tokens `offset`.. after each prompt (None for 1-D RoPE models)."""
    if start is None:
        return None
    ids = start[:, None] + offset + torch.arange(width, device=start.device)
    return ids.unsqueeze(0).expand(3, -1, -1)


@dataclass
class Prefix:
    """The prompts after one prefill, repeated to one row per completion."""

    logits: torch.Tensor  # [rows, vocab]: the next-token logits after each prompt
    cache: Cache  # transformers' DynamicCache, rows repeated
    attention_mask: torch.Tensor  # [rows, prompt length]
    start: torch.Tensor | None  # [rows] position id of the first completion token (M-RoPE models)


def prefill(model: torch.nn.Module, prompts: Prompts, repeats: Sequence[int] | int) -> Prefix:
    """Run each prompt once through the language model, then repeat it `repeats` times (per prompt or all)."""
    pos, start = _positions(model, prompts)
    out = model(**prompts.inputs(), position_ids=pos, use_cache=True, logits_to_keep=1)
    device = out.logits.device
    r = torch.as_tensor(repeats, device=device)
    for layer in out.cache.layers:  # one row per completion; differentiable, so gradients reach the prompt
        layer.keys = layer.keys.repeat_interleave(r, dim=0)
        layer.values = layer.values.repeat_interleave(r, dim=0)
    return Prefix(
        logits=out.logits[:, -1].repeat_interleave(r, dim=0),
        cache=out.cache,
        attention_mask=prompts.batch["attention_mask"].repeat_interleave(r, dim=0),
        start=None if start is None else start.repeat_interleave(r, dim=0),
    )


def rowwise_logprobs(
    model: torch.nn.Module,
    prompts: Prompts,
    completions: Sequence[Sequence[int]],
    repeats: Sequence[int],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logprobs` with one row per completion (each prompt repeated), the image features reused.

    For gradient checkpointing: transformers' checkpointed layers drop a KV cache while training, so the
    prompt cannot be shared there, but the vision tower still need not run again. The log-probs are
    [rows, width] and zero outside the returned mask, like `completion_logprobs`.
    """
    rows = [i for i, k in enumerate(repeats) for _ in range(k)]
    seq = prompts.take(rows)
    batch, mask = append_completions(seq.batch, completions, pad_id)
    logp = logprob_pass(model, dict(batch, mm_encoder_outputs=seq.inputs()["mm_encoder_outputs"]), mask)
    return logp, mask[:, -logp.shape[1] :]


def completion_logprobs(
    model: torch.nn.Module,
    prompts: Prompts,
    completions: Sequence[Sequence[int]],
    repeats: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `completions`, `repeats[i]` of them (consecutive) continuing prompt i.

    Returns ([rows, width] log-probs, zero outside the mask; [rows, width] mask), the layout of
    `logprobs.completion_logprobs` over the straightforward batch. Under active gradient checkpointing, whose
    layers drop the cache, it falls back to `rowwise_logprobs` (same numbers).
    """
    if checkpointing(model):
        return rowwise_logprobs(model, prompts, completions, repeats, pad_id)
    prefix = prefill(model, prompts, repeats)
    ids, mask = (t.to(prefix.logits.device) for t in pad_right(completions, pad_id))
    logits = prefix.logits[:, None]  # the prompt's last position predicts the first completion token
    if ids.shape[1] > 1:  # the completion tokens but the last predict the rest
        out = model(
            input_ids=ids[:, :-1],
            attention_mask=torch.cat([prefix.attention_mask, mask[:, :-1].long()], 1),
            position_ids=_next_positions(prefix.start, 0, ids.shape[1] - 1),
            cache=prefix.cache,
            use_cache=True,
        )
        logits = torch.cat([logits, out.logits], dim=1)
    return token_logprobs(logits, ids, temperature) * mask, mask


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row: argmax at temperature 0, else nucleus sampling at `temperature`."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        outside = sorted_probs.cumsum(-1) - sorted_probs >= top_p
        probs = probs.scatter(-1, order, sorted_probs.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Prompts,
    group_size: int,
    max_new_tokens: int,
    eos_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    suppress: Sequence[int] = (),
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """`group_size` completions per prompt from one prefill: token ids, each ending at its first `eos_id`
    (included) or after `max_new_tokens`. Rows are prompt-major (prompt 0's group first).

    `suppress` tokens are never drawn (the image placeholders; see `chat.vision_token_ids`).
    """
    prefix = prefill(model, prompts, group_size)
    logits, attention = prefix.logits, prefix.attention_mask
    rows = logits.shape[0]
    done = torch.zeros(rows, dtype=torch.bool, device=logits.device)
    tokens = []
    for t in range(max_new_tokens):
        logits = logits.float()
        if suppress:
            logits[:, list(suppress)] = float("-inf")
        tok = torch.where(done, eos_id, _draw(logits, temperature, top_p, generator))
        tokens.append(tok)
        done |= tok == eos_id
        if done.all() or t == max_new_tokens - 1:
            break
        attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=attention,
            position_ids=_next_positions(prefix.start, t, 1),
            cache=prefix.cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]
    ids = torch.stack(tokens, dim=1).tolist()
    return [row[: row.index(eos_id) + 1] if eos_id in row else row for row in ids]
