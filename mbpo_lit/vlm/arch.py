"""What mbpo_lit knows about each supported architecture, in one table.

Everything architecture-specific lives here: which module is the vision tower (frozen and left
unquantized), which linear layers LoRA adapts by default, and how the processor is built, its image budget
included. Adding an architecture means adding one `Arch` entry.

The image budget (`min_pixels` / `max_pixels`): Qwen-VL keeps each image's resolution, resized to a multiple of
28 px (2x2 merged patches of 14 px) whose area lies in the budget, so an image costs area / 784 tokens: a 4K
photograph is about 10,000. The budget caps that, and with it the memory of the vision tower and the prompt. LLaVA
resizes every image to one size (336x336 for LLaVA-1.5: 576 tokens) whatever the budget: a budget that size meets
has nothing to do there and is accepted; one it breaks (`max_pixels` below it, `min_pixels` above it) is refused,
because the cap a user asked for could not hold.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin

from mbpo_lit.core.errors import SettingsError


@dataclass(frozen=True)
class Arch:
    """Facts about one architecture (keyed by the `model_type` in its config.json)."""

    model_type: str
    display: str
    # Module-name prefixes of the vision side (tower + projector/merger): frozen, never quantized.
    vision_modules: tuple[str, ...]
    # The language model's projections that LoRA adapts by default (attention and MLP, as in QLoRA).
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Regex restricting LoRA to the language model, so the vision tower's own q/k/v are never adapted.
    lora_scope: str = r".*language_model.*\.({targets})$"
    extra: dict = field(default_factory=dict)

    def lora_target_regex(self, targets: tuple[str, ...] | list[str] | None = None) -> str:
        """peft `target_modules` regex that matches `targets` inside the language model only."""
        return self.lora_scope.format(targets="|".join(targets or self.lora_targets))


ARCHS: dict[str, Arch] = {
    "qwen2_5_vl": Arch("qwen2_5_vl", "Qwen2.5-VL", vision_modules=("visual",)),
    "qwen2_vl": Arch("qwen2_vl", "Qwen2-VL", vision_modules=("visual",)),
    "llava": Arch("llava", "LLaVA-1.5", vision_modules=("vision_tower", "multi_modal_projector")),
}


def supported() -> str:
    """Human-readable list of supported architectures, for error messages."""
    return ", ".join(f"{a.display} (model_type={k!r})" for k, a in ARCHS.items())


def arch_of(model_type: str, source: str | os.PathLike = "") -> Arch:
    """The `Arch` for a config's model_type, or a ValueError naming what is supported."""
    if model_type not in ARCHS:
        raise ValueError(
            f"{source or 'model'}: architecture model_type={model_type!r} is not supported by mbpo_lit; "
            f"supported: {supported()}"
        )
    return ARCHS[model_type]


def _image_only(processor_cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A subclass of a Qwen-VL processor that handles images and text but no video.

    Qwen's processors insist on a video processor, whose class needs torchvision; a CPU-only machine with
    the CPU torch wheel cannot import torchvision. MBPO never uses video, so we build the same processor
    (same image processor, tokenizer, chat template and token expansion) without that third part.
    """

    class ImageOnlyProcessor(processor_cls):  # type: ignore[misc, valid-type]
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = f"ImageOnly{processor_cls.__name__}"
    return ImageOnlyProcessor


def _chat_template_file(path: str | os.PathLike, **hub_kwargs) -> str | None:
    """The chat template a checkpoint ships beside its tokenizer (`chat_template.jinja` or `.json`)."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        file = cached_file(path, name, _raise_exceptions_for_missing_entries=False, **hub_kwargs)
        if file:
            text = Path(file).read_text()
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def load_processor(
    path: str | os.PathLike,
    model_type: str,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    **hub_kwargs,
) -> ProcessorMixin:
    """Load the processor of a checkpoint (hub id or directory), with left padding for generation and the image
    budget applied (`apply_pixel_budget`; None keeps the checkpoint's own bound).

    Qwen-VL processors are built image-only (see `_image_only`) from the checkpoint's own image processor,
    tokenizer and chat template; LLaVA's comes from `AutoProcessor` unchanged.
    """
    if model_type == "llava":
        processor = AutoProcessor.from_pretrained(path, **hub_kwargs)
    else:
        import transformers

        cls = {"qwen2_5_vl": transformers.Qwen2_5_VLProcessor, "qwen2_vl": transformers.Qwen2VLProcessor}[model_type]
        tokenizer = AutoTokenizer.from_pretrained(path, **hub_kwargs)
        image_processor = AutoImageProcessor.from_pretrained(path, **hub_kwargs)
        template = tokenizer.chat_template or _chat_template_file(path, **hub_kwargs)
        processor = _image_only(cls)(image_processor, tokenizer, chat_template=template)
    apply_pixel_budget(processor, min_pixels, max_pixels)
    # Generation needs left padding; the log-prob pass uses the same batches, so both agree: a padding mismatch
    # between the two would silently shift the multimodal context.
    processor.tokenizer.padding_side = "left"
    return processor


def budget_problems(min_pixels: int | None, max_pixels: int | None, cli: bool = False) -> list[str]:
    """What is wrong with an image budget on its own (each bound a positive whole number, min <= max), each
    problem naming its option: `--max_pixels 0` on a command line (`cli`), `max_pixels=0` in a recipe."""

    def name(key: str, value) -> str:
        return f"--{key} {value}" if cli else f"{key}={value!r}"

    problems = [
        f"{name(k, v)} must be a positive whole number of pixels (or null: the checkpoint's own)"
        for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels))
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1)
    ]
    if not problems and min_pixels is not None and max_pixels is not None and min_pixels > max_pixels:
        problems.append(f"{name('min_pixels', min_pixels)} is above {name('max_pixels', max_pixels)}")
    return problems


def pixel_budget(processor: ProcessorMixin) -> dict[str, int]:
    """The image budget a processor applies, in pixels per image: Qwen-VL's resize bounds, or LLaVA's one size
    (its min and max alike)."""
    ip = processor.image_processor
    if hasattr(ip, "merge_size"):
        size = ip.size
        return {"min_pixels": int(size["shortest_edge"]), "max_pixels": int(size["longest_edge"])}
    h, w = _fixed_size(ip)
    return {"min_pixels": h * w, "max_pixels": h * w}


def _fixed_size(ip) -> tuple[int, int]:
    """(height, width) every image leaves a fixed-size (CLIP) image processor with: the crop, or the resize."""
    size = ip.crop_size if getattr(ip, "do_center_crop", False) else ip.size
    if size.get("height"):
        return int(size["height"]), int(size["width"])
    return int(size["shortest_edge"]), int(size["shortest_edge"])


def apply_pixel_budget(processor: ProcessorMixin, min_pixels: int | None, max_pixels: int | None) -> None:
    """Set a Qwen-VL image processor's resize bounds (transformers 5 keeps them as `size["shortest_edge"]` and
    `size["longest_edge"]`, in pixels); None keeps the checkpoint's bound. For LLaVA's one fixed size, check that
    it lies in the budget (see the module docstring). One-line `SettingsError` naming the option otherwise."""
    if problems := budget_problems(min_pixels, max_pixels):
        raise SettingsError("; ".join(problems))
    if min_pixels is None and max_pixels is None:
        return
    ip = processor.image_processor
    if not hasattr(ip, "merge_size"):
        h, w = _fixed_size(ip)
        if (min_pixels or 0) > h * w or (max_pixels or h * w) < h * w:
            key, value = ("max_pixels", max_pixels) if (max_pixels or h * w) < h * w else ("min_pixels", min_pixels)
            raise SettingsError(
                f"{key}={value}: this model resizes every image to {h}x{w} ({h * w} pixels) whatever the budget, "
                f"so the budget cannot hold; leave min_pixels / max_pixels unset for it"
            )
        return
    own = pixel_budget(processor)
    lo = own["min_pixels"] if min_pixels is None else min_pixels
    hi = own["max_pixels"] if max_pixels is None else max_pixels
    token = (ip.patch_size * ip.merge_size) ** 2
    if lo > hi:
        given = "min_pixels" if min_pixels is not None else "max_pixels"
        raise SettingsError(
            f"{given}={min_pixels if min_pixels is not None else max_pixels}: min_pixels {lo} would be above "
            f"max_pixels {hi} (the checkpoint's own bound fills the unset one); set both"
        )
    if hi < token:
        raise SettingsError(f"max_pixels={hi} is below one image token ({token} pixels: a merged 2x2 patch block)")
    ip.size = {"shortest_edge": lo, "longest_edge": hi}
