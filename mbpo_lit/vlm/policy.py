"""The model layer: one entry point that loads a vision-language policy for MBPO.

`load_policy(ModelConfig(...))` returns the model (a peft `PeftModel` around a Hugging Face
`...ForConditionalGeneration`) and its processor. The frozen reference policy that GRPO's KL term needs is the
starting policy, never a second copy of the base weights (`reference_mode`): fresh adapters start as the base,
so the reference is the model with its adapters switched off; a fit that starts from saved adapters
(`adapter_path`) keeps a frozen second copy of those adapters (a few MB), peft adapter "reference".

Quantization follows QLoRA: the language model's linear layers in 4-bit NF4 with double quantization
(bitsandbytes), LoRA adapters in full precision on top; the vision tower (and projector) stays frozen and
unquantized, because quantizing a small vision encoder saves little memory and costs accuracy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoConfig, AutoModelForImageTextToText, BitsAndBytesConfig, PreTrainedModel, ProcessorMixin

from mbpo_lit.vlm.arch import Arch, arch_of, load_processor
from mbpo_lit.vlm.hub import hub_failure, looks_local

Precision = Literal["auto", "bf16", "fp16", "fp32"]
Quantization = Literal["4bit", "8bit", "none"]
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
BNB_BLOCK = 64  # bitsandbytes' CPU 4-bit kernels need input widths that are multiples of this
REFERENCE = "reference"  # the peft adapter name of the frozen copy of a fit's starting adapters


@dataclass
class LoraSettings:
    """LoRA adapter settings. `targets=None` uses the architecture's default projections (see arch.py)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    targets: list[str] | None = None


@dataclass
class ModelConfig:
    """How to build the policy. Every field is a YAML key under `model:` in the recipes.

    Args:
        name_or_path: a hub id ("Qwen/Qwen2.5-VL-7B-Instruct") or a local checkpoint directory.
        precision: dtype of the unquantized weights and of the 4-bit compute; "auto" is bf16 on a GPU, fp32 on
            the CPU (where bf16 matrix products are slow).
        quantization: "4bit" (QLoRA: NF4 + double quantization), "8bit" (LLM.int8) or "none".
        quantize_vision: also quantize the vision tower and projector (off: they stay in `precision`).
        lora: adapter settings; `None` trains no adapter (the model is then only usable frozen).
        adapter_path: start from adapters saved earlier (peft format) instead of fresh ones.
        reference: the KL reference of a fit from `adapter_path`: "start" (the policy at step 0: a frozen copy
            of those adapters) or "base" (adapters disabled: the model before them). Fresh adapters start as
            the base, so both are the same there; a frozen policy (`lora: null`) loads no copy.
        gradient_checkpointing: recompute activations in backward to save memory.
        device: where to put the model; `None` picks the current CUDA device or the CPU.
        revision: hub revision (branch, tag or commit) for hub ids.
        min_pixels: the image budget's floor, in pixels per image: Qwen-VL upscales a smaller image to this area
            (None: the checkpoint's own, 3136 = 56x56 for the released Qwen-VL models).
        max_pixels: the image budget's cap, in pixels per image: Qwen-VL downscales a larger image to at most
            this area, so an image costs at most max_pixels / 784 tokens (None: the checkpoint's own, about
            12.8 M pixels for the released Qwen2.5-VL: a 4K photograph is then about 10,000 tokens). The Qwen
            7B recipes set 1003520 (1280 tokens). Mining, training and evaluation of one model should use the same
            budget. LLaVA resizes every image to one size (336x336): a budget it meets has no effect, one it
            breaks is refused.
    """

    name_or_path: str
    precision: Precision = "bf16"
    quantization: Quantization = "4bit"
    quantize_vision: bool = False
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    adapter_path: str | None = None
    reference: Literal["start", "base"] = "start"
    gradient_checkpointing: bool = False
    device: str | None = None
    revision: str | None = None
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class Policy:
    """A loaded policy: the (peft-wrapped) model, its processor and the architecture facts."""

    model: PreTrainedModel | PeftModel
    processor: ProcessorMixin
    arch: Arch


def resolve_source(name_or_path: str, revision: str | None = None) -> tuple[AutoConfig, dict]:
    """Load a checkpoint's config, with one clear error for a missing directory or an unreachable hub id."""
    hub_kwargs = {"revision": revision} if revision else {}
    if looks_local(name_or_path):
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "has no config.json"
            raise FileNotFoundError(
                f"model path {name_or_path!r} {what}; give a checkpoint directory (with config.json) "
                f"or a hub id such as 'Qwen/Qwen2.5-VL-7B-Instruct'"
            )
        return AutoConfig.from_pretrained(path), {}
    try:
        return AutoConfig.from_pretrained(name_or_path, **hub_kwargs), hub_kwargs
    except OSError as err:
        raise FileNotFoundError(hub_failure("model", name_or_path, err)) from err


def _quantized_widths(config) -> dict[str, int]:
    """Input widths of the language model's linear layers, the ones bitsandbytes would quantize."""
    text = getattr(config, "text_config", config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_attention_heads * head_dim": heads * head_dim,
    }


def check_quantization(cfg: ModelConfig, config, device: torch.device) -> None:
    """Fail early, with the reason, where bitsandbytes cannot run the requested quantization."""
    if cfg.quantization == "none":
        return
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"quantization={cfg.quantization!r} needs bitsandbytes, which is not importable ({err}); "
            f"install it or set quantization='none'"
        ) from err
    if device.type == "cpu":
        bad = {k: v for k, v in _quantized_widths(config).items() if v % BNB_BLOCK}
        if bad:
            raise ValueError(
                f"quantization={cfg.quantization!r} on the CPU: bitsandbytes' CPU kernels need layer input widths "
                f"that are multiples of {BNB_BLOCK}, but {cfg.name_or_path!r} has {bad}; "
                f"use quantization='none' or a CUDA device"
            )


def _bnb_config(cfg: ModelConfig, arch: Arch) -> BitsAndBytesConfig | None:
    # Modules named here stay in full precision: the vision side (unless asked) and the output head.
    skip = ["lm_head"] + ([] if cfg.quantize_vision else [f"model.{m}" for m in arch.vision_modules])
    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[cfg.precision],
            llm_int8_skip_modules=skip,
        )
    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    return None


def default_device() -> torch.device:
    """The current CUDA device if there is one, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def check_adapter_path(path: str | None) -> None:
    """A local adapter folder must hold a peft adapter (checked before the model loads); a hub id is left to peft."""
    if path is None or not looks_local(path):
        return
    if not (Path(path).expanduser() / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"adapter path {path!r} holds no adapter_config.json; give a peft adapter folder (fit writes "
            f"<default_root_dir>/adapter, and <checkpoint>-adapter beside each checkpoint)"
        )


def load_policy(cfg: ModelConfig) -> Policy:
    """Load model and processor as `cfg` says: quantized base, frozen vision, LoRA adapters on the LM."""
    check_adapter_path(cfg.adapter_path)
    device = torch.device(cfg.device) if cfg.device else default_device()
    if cfg.precision == "auto":
        cfg = dataclasses.replace(cfg, precision="bf16" if device.type == "cuda" else "fp32")
    config, hub_kwargs = resolve_source(cfg.name_or_path, cfg.revision)
    arch = arch_of(config.model_type, cfg.name_or_path)
    if cfg.precision not in DTYPES:
        raise ValueError(f"precision={cfg.precision!r} is not one of {list(DTYPES)}")
    if cfg.quantization not in ("4bit", "8bit", "none"):
        raise ValueError(f"quantization={cfg.quantization!r} is not one of ['4bit', '8bit', 'none']")
    if cfg.reference not in ("start", "base"):
        raise ValueError(f"reference={cfg.reference!r} is not one of ['start', 'base']")
    check_quantization(cfg, config, device)
    path = str(Path(cfg.name_or_path).expanduser()) if looks_local(cfg.name_or_path) else cfg.name_or_path
    # Before the model: a budget the checkpoint's processor cannot take should not wait for a 7B load.
    processor = load_processor(path, arch.model_type, cfg.min_pixels, cfg.max_pixels, **hub_kwargs)

    model = AutoModelForImageTextToText.from_pretrained(
        path,
        dtype=DTYPES[cfg.precision],
        quantization_config=_bnb_config(cfg, arch),
        device_map={"": device},
        **hub_kwargs,
    )
    model.requires_grad_(False)  # the base (vision tower included) is frozen; only adapters train
    if device.type == "cpu" and cfg.quantization == "4bit":
        _keep_cpu_4bit_trainable(model)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # With frozen embeddings nothing upstream requires grad, and checkpointed blocks would see no
        # input that does ("None of the inputs have requires_grad=True"): make the embeddings' output do.
        model.enable_input_require_grads()

    if cfg.adapter_path:
        trainable = cfg.lora is not None
        model = PeftModel.from_pretrained(model, cfg.adapter_path, is_trainable=trainable)
        if trainable and cfg.reference == "start":  # the KL reference: the starting adapters, frozen
            model.load_adapter(cfg.adapter_path, adapter_name=REFERENCE, is_trainable=False)
    elif cfg.lora is not None:
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=arch.lora_target_regex(cfg.lora.targets),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return Policy(model=model, processor=processor, arch=arch)


def _keep_cpu_4bit_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weights the first time it runs in
    eval mode without gradients, and never unpacks them when training resumes: the next training forward
    fails ("a view of a leaf Variable that requires grad is being used in an in-place operation"). GRPO
    alternates generation (eval) and training on the same model, so the repacking is switched off.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


@contextlib.contextmanager
def reference_mode(model: PreTrainedModel | PeftModel) -> Iterator[PreTrainedModel | PeftModel]:
    """The frozen reference policy, under `torch.no_grad`: the starting policy (see the module docstring).

    With a "reference" adapter (a fit from `adapter_path`), that adapter is made the active one for a while;
    otherwise the adapters are disabled. Without adapters (plain model) the model itself is its own reference.
    Every parameter's `requires_grad` is as before afterwards (peft's `set_adapter` changes them).
    """
    if isinstance(model, PeftModel) and REFERENCE in model.peft_config:
        active = model.active_adapter
        flags = [(p, p.requires_grad) for p in model.parameters()]
        model.set_adapter(REFERENCE)
        try:
            with torch.no_grad():
                yield model
        finally:
            model.set_adapter(active)
            for p, flag in flags:
                if p.requires_grad != flag:
                    p.requires_grad_(flag)
        return
    ctx = model.disable_adapter() if isinstance(model, PeftModel) else contextlib.nullcontext()
    with ctx, torch.no_grad():
        yield model


def save_adapter(model: PeftModel, path: str | os.PathLike) -> Path:
    """Save the trained LoRA adapters in peft's own format (`PeftModel.from_pretrained(base, path)` reads it);
    the frozen "reference" copy, if any, is not saved."""
    if not isinstance(model, PeftModel):
        raise TypeError(f"save_adapter needs a PeftModel with adapters, got {type(model).__name__}")
    model.save_pretrained(path, selected_adapters=[n for n in model.peft_config if n != REFERENCE])
    return Path(path)


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Parameters that will be updated (the LoRA weights, under the default settings)."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def is_vision_parameter(name: str, arch: Arch) -> bool:
    """Whether a parameter name belongs to the vision tower or projector."""
    return any(re.search(rf"(^|\.){re.escape(m)}\.", name) for m in arch.vision_modules)
