"""What mbpo_lit knows about each supported architecture, in one table.

Everything architecture-specific lives here: which module is the vision tower (frozen and left
unquantized), which linear layers LoRA adapts by default, and how the processor is built. Adding an
architecture means adding one `Arch` entry.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, ProcessorMixin


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


def load_processor(path: str | os.PathLike, model_type: str, **hub_kwargs) -> ProcessorMixin:
    """Load the processor of a checkpoint (hub id or directory), with left padding for generation.

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
    # Generation needs left padding; the log-prob pass uses the same batches, so both agree: a padding mismatch
    # between the two would silently shift the multimodal context.
    processor.tokenizer.padding_side = "left"
    return processor
