"""`python -m mbpo_lit.fit [--config RECIPE.yaml] [--key value ...]`: MBPO training, the library's main job.

A thin wrapper that runs LightningCLI's `fit` subcommand on `MBPOModule` and `HybridDataModule`, so every
LightningCLI feature stays: YAML recipes (shipped in `mbpo_lit/recipes/`), `--print_config`, and resuming
with `--ckpt_path` (hyper-parameters restored from the checkpoint). With no arguments it runs the embedded
default (`recipes/default.yaml`) end to end: builds or reuses the biased base model, mines offline pairs
if absent, trains hybrid GRPO, and evaluates before (adapters disabled) and after, printing a table.

    python -m mbpo_lit.fit
    python -m mbpo_lit.fit --config mbpo_lit/recipes/qwen2_5_vl_7b_qlora.yaml
    python -m mbpo_lit.fit --config recipe.yaml --ckpt_path runs/fit-default/checkpoints/last.ckpt
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from importlib.resources import files
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

from mbpo_lit.data import HybridDataModule
from mbpo_lit.module import MBPOModule

EMBEDDED = "embedded"
# How the embedded default mines its pairs (MineConfig fields; the ablation runner starts from the same).
# 2,048 train records hold about 220 counter-prior ones; 512 held 45, which left 25 counter-prior pairs.
EMBEDDED_MINING: dict = {"n": 2048, "method": "pgd", "epsilon": 32.0, "iig_filter": "high", "iig_fraction": 0.5}


def recipe(name: str) -> str:
    """Path of a shipped recipe, e.g. recipe("default")."""
    return str(files("mbpo_lit") / "recipes" / f"{name}.yaml")


def embedded_pairs_dir(base: str, mined_root: str = "runs") -> Path:
    """Where the embedded default's pairs are cached: keyed by base model and mining settings, so a rebuilt
    base model never reuses pairs mined from an older one."""
    key = hashlib.sha1(json.dumps([str(base), EMBEDDED_MINING], sort_keys=True).encode()).hexdigest()[:8]
    return Path(mined_root) / f"mined-default-{key}"


def prepare_embedded(module: MBPOModule, data: HybridDataModule, mined_root: str = "runs") -> None:
    """Resolve "embedded" in the config: build/reuse the biased base model, mine pairs if absent."""
    if module.model_config.name_or_path != EMBEDDED and data.pairs_path != EMBEDDED:
        return
    from mbpo_lit.mine import MineConfig, run
    from mbpo_lit.warmstart import WarmStartConfig, build_base_model

    base = str(build_base_model(WarmStartConfig()))
    if module.model_config.name_or_path == EMBEDDED:
        module.model_config.name_or_path = base
    if data.pairs_path == EMBEDDED:
        mine_cfg = MineConfig(out=str(embedded_pairs_dir(base, mined_root)), model=base, **EMBEDDED_MINING)
        dataset = Path(mine_cfg.out) / "dataset"
        if not (dataset / "dataset_info.json").is_file():
            run(mine_cfg)
        data.pairs_path = str(dataset)
    if module.vocabulary is None:
        from mbpo_lit.warmstart import default_world

        module.set_vocabulary(default_world().colors)


def before_after(module: MBPOModule, n: int = 200) -> dict:
    """Evaluate the policy with adapters disabled (the base model) and enabled (after training)."""
    from mbpo_lit.evaluate import evaluate_world
    from mbpo_lit.model import reference_mode
    from mbpo_lit.warmstart import default_world

    world = default_world()
    model, processor = module.model, module.processor
    with reference_mode(model):
        before = evaluate_world(model, processor, world, n, with_iig=False)
    after = evaluate_world(model, processor, world, n, with_iig=False)
    return {"before": before, "after": after}


class MBPOCLI(LightningCLI):
    """LightningCLI with the embedded default's preparation and a before/after table."""

    def before_fit(self) -> None:
        prepare_embedded(self.model, self.datamodule)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero or self.model.policy is None or not self.model.evaluate_after_fit:
            return
        from mbpo_lit.evaluate import format_table

        results = before_after(self.model, self.model.evaluate_n)
        print(format_table({"before (base)": results["before"]["summary"], "after (MBPO)": results["after"]["summary"]}))
        out = Path(self.trainer.default_root_dir) / "before_after.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"results: {out}")


def main(args: list[str] | None = None) -> MBPOCLI:
    """Run `fit` with the default recipe as the base config (any --config / --key overrides it)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args is None:
        # From the command line, LightningCLI must read sys.argv itself: DDP relaunches this very command
        # line for the other ranks, so "fit" is put into sys.argv (once: the relaunch already has it).
        if sys.argv[1:2] != ["fit"]:
            sys.argv[1:1] = ["fit"]
    else:
        args = ["fit", *args]
    return MBPOCLI(
        MBPOModule, HybridDataModule, args=args,
        parser_kwargs={"fit": {"default_config_files": [recipe("default")]}},
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
