"""mbpo_lit: Modality-Balancing Preference Optimization (Liu et al., arXiv 2506.08022) of vision-language
models, on PyTorch Lightning.

Layers, each importing only the ones before it (tests/test_layout.py):

    core/         plain torch: GRPO loss, PGD, answer verification, rewards, metrics, statistics, errors
    vlm/          Hugging Face glue: architectures, policy loading (QLoRA), chat encoding, pixel codec,
                  log-probs, sampling, the shared prompt prefix, Image Information Gain
    data/         record sources (files, hub datasets, benchmark layouts) and the hybrid data module
    evaluation/   scoring, paired intervals, tables, the evaluator
    mining/       adversarial negative mining: settings, the miner, the resumable job
    train/        the LightningModule, its settings, schedule and logs, checkpoints, re-mining, export
    fit, mine, evaluate, export, cli
                  the commands (`python -m mbpo_lit <command>`), thin wrappers
    testbed/      the synthetic world, its biased base model, tiny checkpoints, the embedded default
    experiments/  ablations, benchmarks, plots, notebook helpers

The names below are imported on first use, so `import mbpo_lit` stays fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

# bitsandbytes logs, when imported on some CPUs, that an optional kernel could not be fetched from a kernel hub; the
# 4-bit path works without it and the message gives a user nothing to act on, so it is left out of the console.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda r: "kernels-community" not in r.getMessage())

if TYPE_CHECKING:  # what editors and type checkers see; at run time `__getattr__` imports on first use
    from mbpo_lit.core.answers import is_correct
    from mbpo_lit.core.attack import pgd
    from mbpo_lit.core.grpo import grpo_loss
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.data.sources import Records, RecordSource
    from mbpo_lit.evaluation import EvalConfig, evaluate_model, evaluate_records
    from mbpo_lit.mining import MineConfig, mine_pairs
    from mbpo_lit.train.module import MBPOModule
    from mbpo_lit.train.settings import Loss, Optimization, Rewards, Sampling
    from mbpo_lit.vlm.iig import image_information_gain
    from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, load_policy

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
    "MineConfig": "mbpo_lit.mining",
    "mine_pairs": "mbpo_lit.mining",
    "EvalConfig": "mbpo_lit.evaluation",
    "evaluate_model": "mbpo_lit.evaluation",
    "evaluate_records": "mbpo_lit.evaluation",
}
__all__ = [
    "EvalConfig",
    "HybridDataModule",
    "LoraSettings",
    "Loss",
    "MBPOModule",
    "MineConfig",
    "ModelConfig",
    "Optimization",
    "RecordSource",
    "Records",
    "Rewards",
    "Sampling",
    "evaluate_model",
    "evaluate_records",
    "grpo_loss",
    "image_information_gain",
    "is_correct",
    "load_policy",
    "mine_pairs",
    "pgd",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'mbpo_lit' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)
