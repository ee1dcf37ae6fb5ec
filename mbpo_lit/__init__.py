"""mbpo_lit: Modality-Balancing Preference Optimization (Liu et al., arXiv 2506.08022) of vision-language
models, on PyTorch Lightning.

Layers, each importing only the ones before it:

    core/         plain torch: GRPO loss, PGD, answer verification, rewards, metrics, statistics
    vlm/          Hugging Face glue: architectures, policy loading (QLoRA), chat encoding, pixel codec,
                  log-probs, the shared prompt prefix, Image Information Gain
    data/         record sources (files, hub datasets, benchmark layouts) and the hybrid data module
    train/        the LightningModule and its settings
    mine, evaluate, fit, cli   the commands (`python -m mbpo_lit <command>`)
    testbed/      the synthetic world, its biased base model, tiny checkpoints, the embedded default
    experiments/  ablations, benchmark, plots, notebook helpers

The names below are imported on first use, so `import mbpo_lit` stays fast: `mine_pairs` is `mine.run`,
`evaluate_model` is `evaluate.evaluate`.
"""

from __future__ import annotations

import importlib

_API = {
    "MBPOModule": "mbpo_lit.train.module",
    "Sampling": "mbpo_lit.train.settings",
    "Loss": "mbpo_lit.train.settings",
    "Rewards": "mbpo_lit.train.settings",
    "Optimization": "mbpo_lit.train.settings",
    "HybridDataModule": "mbpo_lit.data.hybrid",
    "RecordSource": "mbpo_lit.data.sources",
    "Records": "mbpo_lit.data.sources",
    "ModelConfig": "mbpo_lit.vlm.policy",
    "LoraSettings": "mbpo_lit.vlm.policy",
    "load_policy": "mbpo_lit.vlm.policy",
    "grpo_loss": "mbpo_lit.core.grpo",
    "pgd": "mbpo_lit.core.attack",
    "is_correct": "mbpo_lit.core.answers",
    "image_information_gain": "mbpo_lit.vlm.iig",
    "MineConfig": "mbpo_lit.mine",
    "mine_pairs": "mbpo_lit.mine",
    "evaluate_model": "mbpo_lit.evaluate",
    "evaluate_records": "mbpo_lit.evaluate",
}
# Exported under other names than in their modules, so they never collide with the submodules `mbpo_lit.mine` and
# `mbpo_lit.evaluate` (importing a submodule sets a package attribute of its name).
_RENAMED = {"mine_pairs": "run", "evaluate_model": "evaluate"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mbpo_lit' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), _RENAMED.get(name, name))
