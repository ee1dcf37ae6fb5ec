"""`python -m mbpo_lit export`: a fit's LoRA adapters merged into their base model, saved as one deployable
checkpoint (safetensors, processor, model card), checked to answer as base + adapters did, and optionally pushed
to the hub (`mbpo_lit.train.export`).

    python -m mbpo_lit export --run runs/fit-qwen2_5_vl_7b                  # writes runs/fit-qwen2_5_vl_7b/merged
    python -m mbpo_lit export --model Qwen/Qwen2.5-VL-7B-Instruct --adapter runs/fit/checkpoints/last-adapter \\
        --out merged/ --precision bf16 --data Pope --data.path coco_pope_adversarial.json --check_records 8
    python -m mbpo_lit export --run runs/fit-qwen2_5_vl_7b --push_to_hub me/qwen2.5-vl-7b-mbpo --private true
"""

from __future__ import annotations

from mbpo_lit import cli
from mbpo_lit.train.export import ExportConfig, export_model


def main(argv: list[str] | None = None) -> dict:
    return cli.run(ExportConfig, export_model, argv)


if __name__ == "__main__":
    main()
