"""`python -m mbpo_lit mine`: offline adversarial negative mining, MBPO's offline half (`mbpo_lit.mining`).

    python -m mbpo_lit mine --model Qwen/Qwen2.5-VL-7B-Instruct --out runs/mined \
        --source VQAv2 --source.path lmms-lab/VQAv2 --source.split validation --n 4000 --epsilon 8 --step_size 1

Writes OUT/dataset (the pairs, `datasets.load_from_disk`), OUT/summary.json, the shards a killed job resumes
from and OUT/skipped.jsonl (`mining.job`); prints the summary.
"""

from __future__ import annotations

import json
from pathlib import Path

from mbpo_lit import cli
from mbpo_lit.mining import MineConfig, mine_pairs


def mine(cfg: MineConfig) -> Path:
    path = mine_pairs(cfg)
    print(json.dumps(json.loads((Path(cfg.out) / "summary.json").read_text()), indent=2))
    print(f"dataset: {path}  (datasets.load_from_disk)")
    return path


def main(argv: list[str] | None = None) -> Path:
    return cli.run(MineConfig, mine, argv)


if __name__ == "__main__":
    main()
