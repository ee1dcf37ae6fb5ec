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
2. `prefill` (sampling) and `logprob_prefix` (the log-prob passes): the prompts go through the language model
   once, keeping the KV cache, which serves k completion rows per prompt (`repeat_interleave`). It is
   differentiable, so the policy pass's gradients reach the adapters through the prompt's keys and values.
3. `prefixed_completion_logprobs` and `sample` continue every completion from that cache.

Gradient checkpointing (the 7B recipes) does not change this: transformers' checkpointed layers drop a cache
while training, but `logprob_prefix`'s cache gives the same tensors however often a layer runs, so the layers
may keep it there (see `_SharedPrefixLayer`); the backward recomputes the prompt's and the completions' layers
and sends the completions' gradient through the prompt's keys and values, in one backward.

The results equal the straightforward path's; `tests/test_prefix.py` checks the loss and the gradients for
each architecture. One difference is by design: in training mode the LoRA dropout mask of a prompt is drawn
once per prompt, not once per completion row.

Both layouts sample by one rule, `vlm.sampling.SamplingRule`: `sample` here draws from one prefill,
`sampling.generate` with transformers' `generate` on one row per completion; same rule, same draws.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from peft import PeftModel
from transformers import (
    BatchFeature,
    Cache,
    DynamicCache,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.cache_utils import DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mbpo_lit.vlm.arch import Arch
from mbpo_lit.vlm.chat import append_completions, encode_prompts, pad_right
from mbpo_lit.vlm.logprobs import completion_logprobs as logprob_pass
from mbpo_lit.vlm.logprobs import token_logprobs
from mbpo_lit.vlm.policy import is_vision_parameter
from mbpo_lit.vlm.sampling import SamplingRule, unwrap


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


def core(model: PreTrainedModel | PeftModel) -> torch.nn.Module:
    """The transformers `...Model` inside a (peft-wrapped) `...ForConditionalGeneration`."""
    return unwrap(model).model


def checkpointing(model: PreTrainedModel | PeftModel) -> bool:
    """Whether gradient checkpointing is active now: transformers' checkpointed layers recompute in the backward
    and drop a KV cache unless allowed to keep it (`_layers_keep_the_cache`)."""
    base = unwrap(model)
    if not (base.training and torch.is_grad_enabled()):
        return False
    # transformers 5.25 renamed the property; the old name still answers, with a FutureWarning on every call
    modern = hasattr(type(base), "is_activation_checkpointing")
    return base.is_activation_checkpointing if modern else base.is_gradient_checkpointing


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
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`completion_logprobs` with one row per completion (each prompt repeated), the image features reused.

    The fallback where the prompt's cache cannot be shared (`_shareable`: a sliding-window layer, or reentrant
    checkpointing): the prompt is then re-read per row, but the vision tower still need not run again. The
    log-probs are [rows, width] and zero outside the returned mask, like `completion_logprobs`.
    """
    rows = [i for i, k in enumerate(repeats) for _ in range(k)]
    seq = prompts.take(rows)
    batch, mask = append_completions(seq.batch, completions, pad_id)
    inputs = dict(batch, mm_encoder_outputs=seq.inputs()["mm_encoder_outputs"])
    logp = logprob_pass(model, inputs, mask, temperature)
    return logp, mask[:, -logp.shape[1] :]


# ------------------------------------------------------------------------------------------------------------
# The policy pass's cache. transformers' checkpointed layers (`GradientCheckpointingLayer`) drop a cache while
# training, because `DynamicLayer.update` appends: the backward's recompute of a layer would append its keys a
# second time and attend over them twice. The two cache layers below make `update` a pure function of its
# inputs (the prefill's stores, replacing; the completions' reads), so recomputing a layer gives the same
# tensors, and the layers may keep the cache (`_can_checkpoint_with_cache`, transformers' switch for layers
# that only read it). With non-reentrant checkpointing, autograd records the layer's operations as usual, so
# the completion pass's gradient flows through the prompt's keys and values into the prefill in the same
# backward; only the saved activations are dropped and recomputed.


class _PrefillLayer(DynamicLayer):
    """A prompt prefill's cache layer: `update` keeps the keys and values it is given, replacing any before,
    so a recompute of the layer in the backward stores the same tensors again instead of appending them."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states
        return key_states, value_states


class _SharedPrefixLayer(DynamicLayer):
    """The prompts' keys and values ([prompts, heads, prompt length, dim]), read by `repeats[i]` completion
    rows per prompt i. `update` returns the prompt's states repeated to one row per completion followed by the
    new tokens' states, and stores nothing: the same result on every call, and the repeated copy is
    recomputed in the backward rather than kept (under checkpointing) for all layers at once."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: torch.Tensor):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values, self.repeats = keys, values, repeats

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys = torch.cat([self.keys.repeat_interleave(self.repeats, dim=0), key_states], dim=-2)
        values = torch.cat([self.values.repeat_interleave(self.repeats, dim=0), value_states], dim=-2)
        return keys, values


def _decoder_layers(model: torch.nn.Module) -> list[GradientCheckpointingLayer]:
    """The language model's decoder layers."""
    return list(core(model).language_model.layers)


def _shareable(model: torch.nn.Module) -> bool:
    """Whether the log-prob passes can share each prompt's cache: every decoder layer attends over the whole
    sequence (a sliding-window layer's cache is not one `_SharedPrefixLayer` replaces), and, under active
    gradient checkpointing, every checkpointed layer uses non-reentrant `torch.utils.checkpoint` (what
    `policy.load_policy` sets). Reentrant checkpointing would pass no gradient to tensors that a layer reads
    from outside its arguments, such as the cache's keys and values."""
    if any(type(layer) is not DynamicLayer for layer in DynamicCache(config=unwrap(model).config).layers):
        return False
    if checkpointing(model):
        for layer in _decoder_layers(model):
            kwargs = getattr(layer._gradient_checkpointing_func, "keywords", {})
            if layer.gradient_checkpointing and kwargs.get("use_reentrant", True):
                return False
    return True


@contextlib.contextmanager
def _layers_keep_the_cache(model: torch.nn.Module) -> Iterator[None]:
    """Let the checkpointed decoder layers keep the cache for a while (they drop it by default, see above).
    Only `_PrefillLayer` and `_SharedPrefixLayer` caches may go through them meanwhile. A layer reads the
    switch when it runs forward; the backward's recompute replays the arguments it was given then."""
    layers = _decoder_layers(model)
    for layer in layers:
        layer._can_checkpoint_with_cache = True  # an instance attribute over the class's False
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache


def logprob_prefix(model: torch.nn.Module, prompts: Prompts, repeats: Sequence[int]) -> Prefix:
    """Prefill each prompt once and return it as a prefix for `repeats[i]` completion rows of prompt i, for a
    pass with gradients: the cache reads the prompts' keys and values (one copy per prompt) through
    `_SharedPrefixLayer`. Call it, and run the completion pass, within `_layers_keep_the_cache`.

    The forwards pass the cache with `use_cache=False`: the layers use a cache they are given either way, and
    transformers would otherwise warn, under checkpointing, that it turns `use_cache` off."""
    pos, start = _positions(model, prompts)
    config = unwrap(model).config
    # Two caches: the prefill's layers keep a reference to theirs, for the backward's recompute.
    filled, shared = DynamicCache(config=config), DynamicCache(config=config)
    filled.layers = [_PrefillLayer() for _ in filled.layers]
    out = model(**prompts.inputs(), position_ids=pos, cache=filled, use_cache=False, logits_to_keep=1)
    r = torch.as_tensor(repeats, device=out.logits.device)
    shared.layers = [_SharedPrefixLayer(layer.keys, layer.values, r) for layer in filled.layers]
    return Prefix(
        logits=out.logits[:, -1].repeat_interleave(r, dim=0),
        cache=shared,
        attention_mask=prompts.batch["attention_mask"].repeat_interleave(r, dim=0),
        start=None if start is None else start.repeat_interleave(r, dim=0),
    )


def prefixed_completion_logprobs(
    model: torch.nn.Module,
    prompts: Prompts,
    completions: Sequence[Sequence[int]],
    repeats: Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of `completions`, `repeats[i]` of them (consecutive) continuing prompt i:
    log softmax(logits / temperature) of each completion token.

    Returns ([rows, width] log-probs, zero outside the mask; [rows, width] mask), the layout of
    `logprobs.completion_logprobs` over the straightforward batch. Each prompt is prefilled once, with or
    without gradient checkpointing (see `_SharedPrefixLayer`); where that cannot be (`_shareable`), it falls
    back to `rowwise_logprobs` (same numbers).
    """
    if not _shareable(model):
        return rowwise_logprobs(model, prompts, completions, repeats, pad_id, temperature)
    with _layers_keep_the_cache(model):
        prefix = logprob_prefix(model, prompts, repeats)
        ids, mask = (t.to(prefix.logits.device) for t in pad_right(completions, pad_id))
        logits = prefix.logits[:, None]  # the prompt's last position predicts the first completion token
        if ids.shape[1] > 1:  # the completion tokens but the last predict the rest
            out = model(
                input_ids=ids[:, :-1],
                attention_mask=torch.cat([prefix.attention_mask, mask[:, :-1].long()], 1),
                position_ids=_next_positions(prefix.start, 0, ids.shape[1] - 1),
                cache=prefix.cache,
                use_cache=False,
            )
            logits = torch.cat([logits, out.logits], dim=1)
    return token_logprobs(logits, ids, temperature) * mask, mask


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: Prompts,
    group_size: int,
    max_new_tokens: int,
    rule: SamplingRule,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """`group_size` completions per prompt from one prefill: token ids, each ending at its first end id
    (included) or after `max_new_tokens`. Rows are prompt-major (prompt 0's group first).

    Rows that have ended are fed `rule.pad_id` and still drawn for, as in `generate`, so that the random stream
    stays aligned with it; their lengths are tracked, so a sampled pad token stays part of a completion.
    """
    prefix = prefill(model, prompts, group_size)
    logits, attention = prefix.logits, prefix.attention_mask
    rows, device = logits.shape[0], logits.device
    end_ids = torch.as_tensor(rule.end_ids, device=device)
    lengths = torch.full((rows,), max_new_tokens, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    tokens = []
    for t in range(max_new_tokens):
        tok = torch.where(done, rule.pad_id, rule.draw(logits, generator))
        tokens.append(tok)
        ended = ~done & torch.isin(tok, end_ids)
        lengths[ended] = t + 1
        done |= ended
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
    return [row[:n] for row, n in zip(ids, lengths.tolist())]
