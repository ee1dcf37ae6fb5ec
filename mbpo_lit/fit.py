"""`python -m mbpo_lit fit [--config RECIPE.yaml] [--key value ...]`: MBPO training, the library's main job.

A thin wrapper that runs LightningCLI's `fit` subcommand on `MBPOModule` and `HybridDataModule`, so every
LightningCLI feature stays: YAML recipes (shipped in `mbpo_lit/recipes/`, each complete on its own),
`--print_config`, and resuming with `--ckpt_path` (hyper-parameters restored from the checkpoint). After
training it evaluates the starting policy (the KL reference: the base model, or the adapter a fit started
from, see `ModelConfig.reference`) and the trained policy on the recipe's eval set (`data.val`) and prints
the table (`evaluation.before_after`). With no arguments it runs the embedded recipe: a tiny biased model on a
synthetic world, built and mined on first use by the recipe's `prepare` hook; options without a `--config`
apply on top of that recipe.

    python -m mbpo_lit fit
    python -m mbpo_lit fit --config mbpo_lit/recipes/qwen2_5_vl_7b_qlora.yaml
    python -m mbpo_lit fit --config recipe.yaml --ckpt_path last   # continue the last run of this recipe
"""

from __future__ import annotations

import sys

from mbpo_lit.cli import USER_ERRORS
from mbpo_lit.data.hybrid import HybridDataModule
from mbpo_lit.train.lightning_cli import MBPOCLI, recipe, with_default_recipe
from mbpo_lit.train.module import MBPOModule

__all__ = ["MBPOCLI", "main", "recipe"]


def main(args: list[str] | None = None) -> MBPOCLI:
    """Run `fit`: the embedded recipe when no `--config` is given, the given recipes otherwise."""
    if args is None:
        # From the command line, LightningCLI must read sys.argv itself: DDP relaunches this very command
        # line for the other ranks, so "fit" and the recipe are put into sys.argv (once: a relaunch has them).
        if sys.argv[1:2] != ["fit"]:
            sys.argv[1:1] = ["fit"]
        sys.argv[2:] = with_default_recipe(sys.argv[2:])
    else:
        args = ["fit", *with_default_recipe(list(args))]
    try:
        return MBPOCLI(MBPOModule, HybridDataModule, args=args, save_config_kwargs={"overwrite": True})
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
