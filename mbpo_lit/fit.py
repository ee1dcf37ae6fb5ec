"""`python -m mbpo_lit.fit`: the library's main job.

Hybrid GRPO training (issue 5) is not built yet. Until it is, this runs what exists on the embedded
default, so that the README's command works on a fresh machine: it writes the tiny Qwen2.5-VL checkpoint,
loads it as a QLoRA policy (4-bit NF4 base, LoRA adapters), and reports what was loaded.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    from mbpo_lit.model import ModelConfig, load_policy, trainable_parameters
    from mbpo_lit.tiny import ensure_tiny_checkpoint

    root = Path(os.environ.get("MBPO_HOME", "runs")) / "checkpoints"
    path = ensure_tiny_checkpoint("qwen2_5_vl", root)
    policy = load_policy(ModelConfig(str(path), precision="fp32", quantization="4bit"))
    n_train = sum(p.numel() for p in trainable_parameters(policy.model).values())
    n_all = sum(p.numel() for p in policy.model.parameters())
    print(f"policy: {policy.arch.display} from {path}, 4-bit base, {n_train:,} trainable of {n_all:,} parameters")
    print("hybrid GRPO training is not implemented yet (issue 5); nothing was trained.", file=sys.stderr)


if __name__ == "__main__":
    main()
