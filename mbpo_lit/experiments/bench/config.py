"""The settings of `python -m mbpo_lit bench`, shared by every measured path (each field is an option)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mbpo_lit.vlm.policy import LoraSettings

BENCH_LORA = LoraSettings(r=8, alpha=16)  # both GRPO sides' adapters (dropout 0.05, the architecture's targets)


@dataclass
class BenchConfig:
    """Time a hybrid GRPO step (shared prefix, rowwise, and TRL's GRPOTrainer when installed), PGD mining (also
    on photographs of mixed sizes) and padding with length grouping, on a tiny or small random checkpoint; with
    `--sections '[precision]'`, the step under Lightning's bf16-true, bf16-mixed and fp32."""

    model: str | None = None
    """a checkpoint directory; None writes a random one of `size` under runs/checkpoints."""
    arch: Literal["qwen2_5_vl", "qwen2_vl", "llava"] = "qwen2_5_vl"
    """the checkpoint's architecture."""
    size: Literal["tiny", "small"] = "tiny"
    """of the random checkpoint: "tiny" (CPU) or "small" (a 1024-wide, 8-layer LM with a 448-px vision tower,
    for GPUs)."""
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    """of the policy's frozen base weights."""
    precision: Literal["bf16", "fp16", "fp32"] = "fp32"
    """of the policy (bf16 for GPU runs)."""
    group_size: int = 8
    """G, completions per online prompt."""
    prompts: int = 4
    """online prompts per step (no offline pairs: TRL's GRPOTrainer has none)."""
    max_new_tokens: int = 8
    """longest completion."""
    beta: float = 0.04
    """KL weight (> 0: the reference pass is timed too)."""
    mu: int = 1
    """optimisation passes over one rollout."""
    steps: int = 5
    """measured steps, after `warmup` unmeasured ones."""
    warmup: int = 1
    """unmeasured steps first."""
    pgd_steps: int = 10
    """PGD steps of the mining measurements."""
    pgd_images: int = 8
    """images attacked together (world images; and photographs in the mixed-size measurement)."""
    trl: bool = True
    """run TRL's GRPOTrainer on the same settings when `trl` is installed (false: skip it)."""
    gradient_checkpointing: bool = False
    """recompute the language model's activations in the backward, on every GRPO side (as the 7B recipes do):
    the shared prefix then prefills each prompt once through checkpointed layers, the rowwise side checkpoints
    one row per completion."""
    trl_lora_dtype: Literal["match", "trl"] = "match"
    """"match" casts the LoRA weights that TRL turns to bf16 on a quantized model back to the dtype mbpo_lit
    trains them in (fp32); "trl" keeps TRL's bf16 (then listed as unmatched)."""
    sections: tuple[Literal["grpo", "pgd", "mining", "mine_sizes", "padding", "precision"], ...] = (
        "grpo",
        "pgd",
        "mining",
        "mine_sizes",
        "padding",
    )
    """the measurements to run (a sweep over G or sizes wants only "grpo"); a skipped one reports "skipped".
    "mining" runs the default mining config on the world's shipped base model, whatever `size` is. "precision"
    (not run unless named) times the shared-prefix GRPO step and its peak memory under Lightning's "bf16-true"
    and "bf16-mixed" (weights loaded in bf16) and "32-true" (fp32), whatever `precision` is."""
    image_size: int | None = None
    """side of the random checkpoint's images in pixels (None: the size's own, 112 tiny, 448 small); it sets the
    prompt length (Qwen-VL: (image_size / 28)^2 image tokens per prompt)."""
    out: str = "runs/bench/bench.json"
    """the results as JSON."""
