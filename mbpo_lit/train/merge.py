"""Merging trained LoRA adapters into their base model, saving the result as a standalone checkpoint, and proving
that it answers as base + adapters did.

A merged checkpoint is what a deployment loads (`AutoModelForImageTextToText.from_pretrained(out)` and
`AutoProcessor.from_pretrained(out)`, vLLM, TGI): no peft, no adapter folder. Merging adds each LoRA update B A
(times its scale) into the weight it adapts, so the merged model computes what base + adapters computed, up to the
rounding of the sum in the saved dtype. The check here measures that on real prompts: the greedy answers of the
merged checkpoint, loaded back from disk with its saved processor, must equal those of base + adapters.

Merging is done into full-precision weights only (bf16, fp16 or fp32). A 4-bit or 8-bit base would round each
LoRA update into the quantization grid, where most of it vanishes, and bitsandbytes' packed weights are no
standalone deployable checkpoint: adapters trained with QLoRA are merged into the unquantized base.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import PeftModel
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, PreTrainedModel, ProcessorMixin

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.sources import Record
from mbpo_lit.evaluation import greedy_answers
from mbpo_lit.vlm.arch import Arch, load_processor
from mbpo_lit.vlm.policy import DTYPES

# What a user may ask for instead of a full-precision dtype, and is refused (see the module docstring).
QUANTIZED = ("4bit", "8bit", "nf4", "fp4", "int4", "int8")
# Questions of the synthetic check, when no eval set is given: each about the generated image.
SYNTHETIC_QUESTIONS = (
    "Describe the image.",
    "What color is the circle?",
    "Is there a square in the image? Answer yes or no.",
    "How many objects are there?",
    "What is on the left of the image?",
    "What color is the square?",
    "Is there a cat in the image? Answer yes or no.",
    "What is in the middle of the image?",
)


class MergeMismatch(SettingsError):
    """The merged checkpoint answers a check record differently from base + adapters: nothing is written. Its
    remedy is a setting (a wider `--precision`, or `--check_records 0` to accept the difference)."""


def check_precision(precision: str) -> None:
    """Refuse a dtype the merge cannot be done in, quantization with the reason (see the module docstring)."""
    if precision.lower() in QUANTIZED:
        raise SettingsError(
            f"--precision {precision!r}: adapters are merged into full-precision weights only; in 4-bit or 8-bit "
            f"weights the LoRA update rounds away and the packed result is no standalone checkpoint: use bf16, "
            f"fp16 or fp32 (quantize the merged checkpoint afterwards if you need to)"
        )
    if precision not in DTYPES:
        raise SettingsError(f"--precision {precision!r} is not one of {list(DTYPES)}")


def synthetic_image(size: int = 224) -> Image.Image:
    """A fixed picture of a few coloured shapes: the check's image when no eval set is given."""
    image = Image.new("RGB", (size, size), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    unit = size // 8
    draw.ellipse((unit, 3 * unit, 3 * unit, 5 * unit), fill=(200, 30, 30))
    draw.rectangle((5 * unit, 3 * unit, 7 * unit, 5 * unit), fill=(30, 60, 200))
    draw.polygon([(4 * unit, unit), (3 * unit, 2 * unit + unit // 2), (5 * unit, 2 * unit + unit // 2)], fill="green")
    return image


def synthetic_records(n: int) -> list[Record]:
    """`n` check records on `synthetic_image` (its questions in turn)."""
    image = synthetic_image()
    return [
        Record(id=f"synthetic-{i}", question=SYNTHETIC_QUESTIONS[i % len(SYNTHETIC_QUESTIONS)], image=image)
        for i in range(n)
    ]


def spread(records: Sequence[Record], n: int) -> list[Record]:
    """`n` records spread evenly over `records` (an eval set is often ordered by group: take from each)."""
    if n >= len(records):
        return list(records)
    return [records[i * len(records) // n] for i in range(n)]


def answers(model: torch.nn.Module, processor: ProcessorMixin, records: Sequence[Record], new_tokens: int) -> list:
    """Greedy answers to the check records, in one batch (the evaluator's own decoding)."""
    questions, images = [r["question"] for r in records], [r["image"] for r in records]
    return greedy_answers(model, processor, questions, images, len(records) or 1, new_tokens, progress=False)


def merge(model: PeftModel) -> PreTrainedModel:
    """Base + adapters as one plain transformers model (peft's `merge_and_unload`), checked to hold no LoRA
    weight any more."""
    merged = model.merge_and_unload()
    left = [n for n, _ in merged.named_parameters() if "lora_" in n]
    if left:
        raise RuntimeError(f"merge_and_unload left LoRA weights in the model: {left[:3]}")
    return merged


def stock_processor_class(processor: ProcessorMixin) -> type[ProcessorMixin]:
    """The transformers processor class a saved processor must name, so that `AutoProcessor` loads it: the
    image-only Qwen-VL processors of `vlm.arch` subclass the stock class and would name themselves after it."""
    return next(c for c in type(processor).__mro__ if c.__module__.startswith("transformers."))


def save_processor(processor: ProcessorMixin, out: Path, source: str, **hub_kwargs) -> None:
    """Save a processor as the source checkpoint lays it out: the stock processor class recorded (not the
    image-only subclass), the tokenizer's own padding side (generation sets left), the source's video
    processor settings carried over (the image-only processor has none, the stock one loads them)."""
    tokenizer = processor.tokenizer
    side = tokenizer.padding_side
    tokenizer.padding_side = tokenizer.init_kwargs.get("padding_side", type(tokenizer).padding_side)
    try:
        processor.save_pretrained(out)
    finally:
        tokenizer.padding_side = side
    stock_class = stock_processor_class(processor)
    stock = stock_class.__name__
    for file in out.glob("*.json"):
        config = json.loads(file.read_text())
        if isinstance(config, dict) and config.get("processor_class", stock) != stock:
            file.write_text(json.dumps(config | {"processor_class": stock}, indent=2) + "\n")
    if "video_processor" in stock_class.get_attributes():
        _video_processor_config(processor, out, source, stock, **hub_kwargs)


def _video_processor_config(processor: ProcessorMixin, out: Path, source: str, stock: str, **hub_kwargs) -> None:
    """Give the stock Qwen-VL processor the video processor settings it loads: the source's own
    `video_preprocessor_config.json`, or else (as released Qwen-VL checkpoints do) the image processor's settings
    as `preprocessor_config.json`, which transformers falls back to. Without either, `AutoProcessor` fails."""
    from transformers.utils import cached_file

    name = "video_preprocessor_config.json"
    found = cached_file(source, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
    if found:
        shutil.copyfile(found, out / name)
        return
    if not (out / "preprocessor_config.json").exists():
        processor.image_processor.save_pretrained(out)
        file = out / "preprocessor_config.json"
        file.write_text(json.dumps(json.loads(file.read_text()) | {"processor_class": stock}, indent=2) + "\n")


def load_merged(out: Path, arch: Arch, precision: str, device: torch.device) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A saved merged checkpoint loaded back as a deployment would load it (plain transformers, no peft)."""
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=DTYPES[precision], device_map={"": device})
    return model, load_processor(out, arch.model_type)


def mismatches(records: Sequence[Record], expected: Sequence[str], got: Sequence[str]) -> list[str]:
    """One entry per record whose merged answer differs from base + adapters', naming the record."""
    return [
        f"record {r.get('id', i)!r}: base + adapter {a!r}, merged {b!r}"
        for i, (r, a, b) in enumerate(zip(records, expected, got, strict=True))
        if a != b
    ]


def refuse_mismatches(found: list[str], n: int, precision: str) -> None:
    """Fail in one line when the merged checkpoint answers differently (the first three records named)."""
    if not found:
        return
    more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
    wider = "merge in fp32 (--precision fp32), which rounds less, or " if precision != "fp32" else ""
    raise MergeMismatch(
        f"the merged model answers {len(found)} of {n} check records differently from base + adapter "
        f"({'; '.join(found[:3])}{more}); nothing was written: {wider}accept the difference with --check_records 0"
    )
