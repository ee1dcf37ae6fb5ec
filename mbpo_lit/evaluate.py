"""`python -m mbpo_lit evaluate`: judge-free evaluation of a model (base, or base + adapter) on an eval set
(`mbpo_lit.evaluation`).

    python -m mbpo_lit evaluate --model Qwen/Qwen2.5-VL-7B-Instruct --adapter runs/fit-qwen2_5_vl_7b/adapter \
        --data Pope --data.path coco_pope_adversarial.json --data.image_root val2014/ --compare true
    python -m mbpo_lit evaluate --model DIR --data Pope --data.path 'pope/coco_pope_*.json'
    python -m mbpo_lit evaluate --model DIR --data Amber --data.path AMBER/data/query/query_discriminative.json \
        --data.image_root AMBER/image/
    python -m mbpo_lit evaluate --model DIR --data CocoChair --data.annotations instances_val2014.json \
        --data.image_root val2014/ --data.n 500 --data.spread true --max_new_tokens 512
    python -m mbpo_lit evaluate --model DIR --data pope.jsonl --out results.json
"""

from __future__ import annotations

from mbpo_lit import cli
from mbpo_lit.evaluation import EvalConfig, evaluate_model


def main(argv: list[str] | None = None) -> dict:
    return cli.run(EvalConfig, evaluate_model, argv)


if __name__ == "__main__":
    main()
