"""Tiny, real Hugging Face checkpoints of the supported architectures, written offline.

Tests and the embedded default run need vision-language models, and these machines reach no model hub.
So this module writes a complete checkpoint directory (config, safetensors weights, a tokenizer trained
here with the `tokenizers` library, image processor, processor and chat template) for a tiny
configuration of Qwen2.5-VL, Qwen2-VL or LLaVA-1.5. Everything downstream then loads it with the same
`from_pretrained` calls as a 7B checkpoint.

Widths are multiples of 64 on purpose: bitsandbytes' CPU 4-bit kernels reject a linear layer whose input
width is below its block size (64), and we want the QLoRA path tested on the CPU, not skipped.

    python -m mbpo_lit tiny --arch qwen2_5_vl --out checkpoints/tiny-qwen2_5_vl
    python -m mbpo_lit tiny --arch llava --out checkpoints/tiny-llava --spec.image_size 112
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForImageTextToText,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
)

ARCHS = ("qwen2_5_vl", "qwen2_vl", "llava")

# Special tokens as the released checkpoints spell them, so prompts and processors behave identically.
QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# A Qwen-style chat template (without Qwen's default system turn, to keep tiny sequences short): turns with
# {"type": "image"} / {"type": "text"} parts.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# LLaVA-1.5's conversation format: "USER: <image>\n{question} ASSISTANT: {answer}</s>".
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} "
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{{ part['text'] }}{% endfor %}{% endif %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

# Enough English for the embedded scene world and close-ended questions to tokenize into few pieces;
# the byte-level alphabet makes every other string encodable too.
BASE_CORPUS = """
What color is the circle? What colour is the square? The banana is yellow. The apple is red.
Is there a cat in the image? Answer yes or no. Yes. No. yes no
How many objects are there? zero one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9
Answer with the letter of the correct option. A. B. C. D. (A) (B) (C) (D) A B C D
Describe the image. The image shows a red circle, a blue square and a green triangle.
red green blue yellow orange purple white black gray brown pink cyan
circle square triangle star cross ring heart diamond moon leaf sun tree car boat fish bird apple banana
left right top bottom middle center above below next to near
There is a There are no The answer is Question Answer Options
"""


@dataclass
class TinySpec:
    """Sizes of a tiny checkpoint. Widths stay multiples of 64 (see module docstring)."""

    hidden_size: int = 64
    """width of the language model."""
    intermediate_size: int = 128
    """width of the language model's MLP."""
    num_layers: int = 2
    """layers of the language model."""
    num_heads: int = 2
    """attention heads of the language model and of the vision tower."""
    num_kv_heads: int = 1
    """key/value heads of the language model."""
    vision_hidden_size: int = 64
    """width of the vision tower."""
    vision_layers: int = 2
    """layers of the vision tower."""
    image_size: int = 56
    """pixels per side; 56 = 4 patches of 14, i.e. 4 merged Qwen tokens or 16 LLaVA tokens."""
    vocab_size: int = 512
    """of the tokenizer trained here."""
    seed: int = 0
    """of the random weights."""


def train_tokenizer(specials: list[str], vocab_size: int, extra_text: list[str] | None = None) -> Tokenizer:
    """Train a byte-level BPE tokenizer locally; `specials` become single, unsplittable tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = BASE_CORPUS.strip().splitlines() + list(extra_text or [])
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def _qwen_config(arch: str, spec: TinySpec, tok: PreTrainedTokenizerFast):
    head_dim = spec.hidden_size // spec.num_heads
    # M-RoPE splits the rotary half-dimension into (temporal, height, width) sections.
    half = head_dim // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
        bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
    )
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    if arch == "qwen2_5_vl":
        vision = dict(
            depth=spec.vision_layers,
            hidden_size=spec.vision_hidden_size,
            intermediate_size=2 * spec.vision_hidden_size,
            num_heads=spec.num_heads,
            out_hidden_size=spec.hidden_size,
            window_size=112,
            fullatt_block_indexes=[spec.vision_layers - 1],
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    vision = dict(
        depth=spec.vision_layers,
        embed_dim=spec.vision_hidden_size,
        hidden_size=spec.hidden_size,
        mlp_ratio=2,
        num_heads=spec.num_heads,
    )
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def _llava_config(spec: TinySpec, tok: PreTrainedTokenizerFast) -> LlavaConfig:
    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=2 * spec.vision_hidden_size,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.num_heads,
        image_size=spec.image_size,
        patch_size=14,
        projection_dim=spec.vision_hidden_size,
    )
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=2048,
        bos_token_id=tok.convert_tokens_to_ids("<s>"),
        eos_token_id=tok.convert_tokens_to_ids("</s>"),
        pad_token_id=tok.convert_tokens_to_ids("<pad>"),
    )
    # LLaVA-1.5 drops the CLS token ("default" strategy) and uses the penultimate vision layer.
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(spec.image_size // 14) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )


def _save_processor(arch: str, spec: TinySpec, tok: PreTrainedTokenizerFast, out: Path) -> None:
    """Save the processor's parts as released checkpoints lay them out."""
    if arch == "llava":
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": spec.image_size},
            crop_size={"height": spec.image_size, "width": spec.image_size},
        )
        LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=14,
            vision_feature_select_strategy="default",
            image_token="<image>",
            num_additional_image_tokens=1,
            chat_template=LLAVA_CHAT_TEMPLATE,
        ).save_pretrained(out)
        return
    from transformers import Qwen2VLImageProcessorPil

    # min/max pixels pin the tiny world's images to a fixed grid; real checkpoints keep their own.
    pixels = spec.image_size * spec.image_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels,
        max_pixels=pixels,
        patch_size=14,
        merge_size=2,
        temporal_patch_size=2,
    )
    # Qwen's processor class wants a torchvision video processor, so its parts are saved one by one, with
    # processor_class recorded as in the released checkpoints (AutoProcessor works where torchvision does).
    processor_cls = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen2_vl": "Qwen2VLProcessor"}[arch]
    tok.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        cfg = json.loads((out / name).read_text())
        cfg["processor_class"] = processor_cls
        (out / name).write_text(json.dumps(cfg, indent=2))


def _tokenizer(arch: str, spec: TinySpec, extra_text: list[str] | None) -> PreTrainedTokenizerFast:
    if arch == "llava":
        raw = train_tokenizer(LLAVA_SPECIALS, spec.vocab_size, extra_text)
        # LLaVA prompts begin with <s>, as Llama's tokenizer adds it.
        raw.post_processor = processors.TemplateProcessing(
            single="<s> $A",
            pair="<s> $A $B",
            special_tokens=[("<s>", raw.token_to_id("<s>"))],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=raw,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            extra_special_tokens={"image_token": "<image>"},
            padding_side="left",
            model_max_length=2048,
        )
    raw = train_tokenizer(QWEN_SPECIALS, spec.vocab_size, extra_text)
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        padding_side="left",
        model_max_length=2048,
    )


def write_tiny_checkpoint(
    arch: str, out: str | os.PathLike, spec: TinySpec | None = None, extra_text: list[str] | None = None
) -> Path:
    """Write a complete tiny checkpoint of `arch` to `out` and return the directory.

    The result loads with `AutoModelForImageTextToText.from_pretrained(out)` and
    `AutoProcessor.from_pretrained(out)`, exactly like a released checkpoint. `extra_text` adds lines to
    the tokenizer's training corpus (e.g. the vocabulary of a synthetic world).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {ARCHS}")
    spec = spec or TinySpec()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(arch, spec, extra_text)
    config = _llava_config(spec, tok) if arch == "llava" else _qwen_config(arch, spec, tok)
    torch.manual_seed(spec.seed)
    model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    _save_processor(arch, spec, tok, out)
    return out


def ensure_tiny_checkpoint(arch: str, root: str | os.PathLike, spec: TinySpec | None = None) -> Path:
    """Return `root/tiny-<arch>`, writing it first if it is not there (idempotent cache for tests and demos)."""
    out = Path(root) / f"tiny-{arch}"
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".tmp")
        write_tiny_checkpoint(arch, tmp, spec)
        tmp.rename(out)  # atomic: a killed write never leaves a half checkpoint behind under the final name
    return out


@dataclass
class TinyConfig:
    """Write a tiny, randomly initialised checkpoint of a supported architecture (config, weights, tokenizer,
    processor, chat template), loadable with `from_pretrained` like a released one."""

    out: str
    """directory to write the checkpoint into."""
    arch: Literal["qwen2_5_vl", "qwen2_vl", "llava"] = "qwen2_5_vl"
    """the architecture."""
    spec: TinySpec = field(default_factory=TinySpec)
    """its sizes, e.g. --spec.hidden_size 128 --spec.image_size 112."""


def tiny(cfg: TinyConfig) -> Path:
    """Write the checkpoint of `cfg` and print its size."""
    path = write_tiny_checkpoint(cfg.arch, cfg.out, cfg.spec)
    n = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(path).parameters())
    print(f"wrote tiny {cfg.arch} ({n / 1e6:.2f}M parameters) to {path}")
    return path


def main(argv: list[str] | None = None) -> Path:
    from mbpo_lit import cli

    return cli.run(TinyConfig, tiny, argv)


if __name__ == "__main__":
    main()
