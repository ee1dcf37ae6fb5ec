"""`python -m mbpo_lit.fit`: the library's main job.

Hybrid GRPO training (issue 5) is not built yet. Until it is, this runs what exists on the embedded
default, so that the README's command works on a fresh machine: it builds (or reuses) the biased base model
of the synthetic world (see `mbpo_lit.warmstart`), evaluates it, and prints the modality-imbalance numbers
that MBPO is meant to improve. It trains no adapter and says so.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mbpo_lit.evaluate import evaluate_world, format_table
    from mbpo_lit.model import ModelConfig, load_policy
    from mbpo_lit.warmstart import WarmStartConfig, build_base_model

    cfg = WarmStartConfig()
    path = build_base_model(cfg)
    policy = load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=None))
    results = evaluate_world(policy.model, policy.processor, cfg.world, n=200)
    print(f"\nbiased base model: {path}")
    print(format_table({"base": results["summary"]}))
    out = path.parent / "eval_base.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"full results: {out}")
    print("hybrid GRPO training is not implemented yet (issue 5); no adapter was trained.", file=sys.stderr)


if __name__ == "__main__":
    main()
