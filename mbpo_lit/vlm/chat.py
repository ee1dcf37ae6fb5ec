"""Prompts in, tensors out: chat formatting, batching and the image-token check.

Every place that feeds the model (generation, log-probs, PGD, IIG) builds its batch here, so that padding
side, chat template and image placeholders are the same everywhere: a padding mismatch between generation
and the log-prob pass would silently corrupt the multimodal context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin


def user_message(question: str, with_image: bool = True) -> list[dict]:
    """One user turn holding an image placeholder (optional) and the question."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
    return [{"role": "user", "content": content}]


def prompt_texts(processor: ProcessorMixin, questions: Sequence[str], with_image: bool = True) -> list[str]:
    """Chat-formatted prompt strings, ending where the assistant's answer starts."""
    return [
        processor.apply_chat_template(user_message(q, with_image), add_generation_prompt=True, tokenize=False)
        for q in questions
    ]


def image_token_id(processor: ProcessorMixin) -> int:
    """Id of the image placeholder token that the processor expands per image feature."""
    return processor.tokenizer.convert_tokens_to_ids(processor.image_token)


def vision_token_ids(processor: ProcessorMixin) -> list[int]:
    """Ids of the image/video placeholder and vision delimiter tokens, which a completion must never hold.

    A sampled completion that contains an image placeholder breaks the next forward pass ("Image features
    and image tokens do not match"), so generation suppresses these tokens (`suppress_tokens=`).
    """
    tok = processor.tokenizer
    names = [
        getattr(processor, "image_token", None),
        getattr(processor, "video_token", None),
        "<|vision_start|>",
        "<|vision_end|>",
        "<image>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    ids = {tok.convert_tokens_to_ids(n) for n in names if n}
    return sorted(i for i in ids if i is not None and i != tok.unk_token_id)


def features_per_image(batch: BatchFeature, processor: ProcessorMixin) -> list[int]:
    """How many image features the vision tower will produce for each image of a batch."""
    if "image_grid_thw" in batch:  # Qwen-VL: patches are merged merge_size x merge_size into one token
        merge = processor.image_processor.merge_size
        return [int(g.prod()) // merge**2 for g in batch["image_grid_thw"]]
    # LLaVA: one token per patch, plus the additional (CLS) tokens the feature strategy keeps.
    h, w = batch["pixel_values"].shape[-2:]
    extra = processor.num_additional_image_tokens - (processor.vision_feature_select_strategy == "default")
    per = (h // processor.patch_size) * (w // processor.patch_size) + extra
    return [per] * batch["pixel_values"].shape[0]


def check_image_tokens(batch: BatchFeature, processor: ProcessorMixin, record_ids: Sequence | None = None) -> None:
    """Fail, naming the record, if a sample's image placeholders do not match its image features.

    Catches truncation through an image span and misaligned images before the model silently misreads them.
    """
    if "pixel_values" not in batch:
        return
    counts = (batch["input_ids"] == image_token_id(processor)).sum(dim=1).tolist()
    expected = features_per_image(batch, processor)
    if len(counts) != len(expected):
        raise ValueError(f"batch has {len(counts)} prompts but {len(expected)} images; mbpo_lit uses one image each")
    for i, (got, want) in enumerate(zip(counts, expected)):
        if got != want:
            rid = record_ids[i] if record_ids is not None else i
            raise ValueError(
                f"record {rid!r}: {got} image placeholder tokens but {want} image features "
                f"(was the prompt truncated inside the image span?)"
            )


def encode_prompts(
    processor: ProcessorMixin,
    questions: Sequence[str],
    images: Sequence[Image.Image] | None,
    record_ids: Sequence | None = None,
) -> BatchFeature:
    """Tokenize a batch of (image, question) prompts with left padding, ready for `generate`.

    `images=None` builds text-only prompts (the "no image" side of Image Information Gain).
    """
    texts = prompt_texts(processor, questions, with_image=images is not None)
    processor.tokenizer.padding_side = "left"
    if images is None:
        return processor(text=texts, return_tensors="pt", padding=True)
    batch = processor(text=texts, images=list(images), return_tensors="pt", padding=True)
    check_image_tokens(batch, processor, record_ids)
    return batch


def pad_right(completions: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion token ids right-padded to the longest, and their mask: both [rows, longest]."""
    width = max((len(c) for c in completions), default=0)
    ids = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(completions), width), dtype=torch.bool)
    for i, c in enumerate(completions):
        ids[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        mask[i, : len(c)] = True
    return ids, mask


def append_completions(
    batch: BatchFeature, completions: Sequence[Sequence[int]], pad_id: int
) -> tuple[BatchFeature, torch.Tensor]:
    """Append completion token ids after each (left-padded) prompt, right-padding the completions.

    Returns the extended batch and a mask over the completion positions of `input_ids`. The prompt part is
    unchanged, so the forward pass sees the exact context that generation saw (same positions, same M-RoPE).
    """
    ids, mask = pad_right(completions, pad_id)
    prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
    ids, mask = ids.to(prompt_ids.device, prompt_ids.dtype), mask.to(prompt_mask.device, prompt_mask.dtype)
    out = BatchFeature(dict(batch))
    out["input_ids"] = torch.cat([prompt_ids, ids], dim=1)
    out["attention_mask"] = torch.cat([prompt_mask, mask], dim=1)
    if "mm_token_type_ids" in batch:  # Qwen marks image positions; completions are text
        types = batch["mm_token_type_ids"]
        out["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(ids, dtype=types.dtype, device=types.device)], 1)
    return out, torch.cat([torch.zeros_like(prompt_mask), mask], 1).bool()


def answer_token_ids(processor: ProcessorMixin, answers: Sequence[str]) -> list[list[int]]:
    """Token ids of answers as the assistant would write them, ending with the end-of-turn token."""
    tok = processor.tokenizer
    return [tok(a, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for a in answers]


def take_rows(batch: BatchFeature, index: torch.Tensor) -> BatchFeature:
    """The samples at `index` of a batch of one image per prompt: every per-sample tensor sliced, and Qwen's
    `pixel_values`, whose rows belong to images by `image_grid_thw`, sliced image by image (not row by row)."""
    n = batch["input_ids"].shape[0]
    out = {}
    for key, value in batch.items():
        if key == "pixel_values" and "image_grid_thw" in batch:
            sizes = batch["image_grid_thw"].prod(-1).tolist()
            out[key] = torch.cat([value.split(sizes)[i] for i in index.tolist()])
        elif torch.is_tensor(value) and value.shape[:1] == (n,):
            out[key] = value[index.to(value.device)]
        else:
            out[key] = value
    return BatchFeature(out)
