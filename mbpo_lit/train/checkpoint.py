"""Adapters for everyone else's tools: the LoRA weights as a peft folder beside every Lightning checkpoint.

A Lightning checkpoint (`last.ckpt`) resumes training; a peft folder (`adapter_config.json` +
`adapter_model.safetensors`) is what `PeftModel.from_pretrained(base, path)`, `ModelConfig(adapter_path=path)`,
`python -m mbpo_lit evaluate --adapter path` and TRL read. `AdapterCheckpoint` writes both; the module writes
`<default_root_dir>/adapter` when training ends.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from mbpo_lit.vlm.policy import save_adapter

# Lightning warns at every checkpoint of a manually optimised module that it holds the weights after the step's
# optimizer update. That is what a checkpoint of step N is here (the weights after N updates, which a resumed run
# continues from), so the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")


def adapter_dir(checkpoint: str | os.PathLike) -> Path:
    """The peft folder written beside a checkpoint: `.../last.ckpt` -> `.../last-adapter`."""
    path = Path(checkpoint)
    return path.with_name(path.stem + "-adapter")


def export_adapter(module: L.LightningModule, out: str | os.PathLike) -> Path:
    """Write the module's LoRA adapters to `out` as a peft folder (safetensors), atomically: a kill during the
    write leaves the previous folder (or none), never a half-written one."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(module.model, tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


class AdapterCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that also writes each checkpoint's adapters as a peft folder beside it (see the module
    docstring), and removes that folder with the checkpoint. Takes ModelCheckpoint's arguments.

    Without a `dirpath`, checkpoints go to `<default_root_dir>/checkpoints`, one folder for every run of a recipe
    (not the logger's new `version_N` each time), so `--ckpt_path last` finds the last one of the previous run.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._default_dirpath = self.dirpath is None

    def _stable_dirpath(self, trainer: L.Trainer) -> None:
        if self._default_dirpath:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stable_dirpath(trainer)
        super().setup(trainer, pl_module, stage)

    def _find_last_checkpoints(self, trainer: L.Trainer) -> set[str]:
        self._stable_dirpath(trainer)  # asked before `setup` when resolving `--ckpt_path last`
        return super()._find_last_checkpoints(trainer)

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            export_adapter(trainer.lightning_module, adapter_dir(filepath))

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            shutil.rmtree(adapter_dir(filepath), ignore_errors=True)
