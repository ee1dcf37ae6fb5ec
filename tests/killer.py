"""Callbacks that SIGKILL the training process they run in (for the resume tests, which start `fit` in a
subprocess with this folder on PYTHONPATH and name these by class_path)."""

import io
import os
import signal

import fsspec
import lightning as L
import torch


class KillAtStep(L.Callback):
    """Kill the process at the end of the batch that reaches `step` optimizer steps. Lightning runs checkpoint
    callbacks last, so step `step`'s checkpoint is never written: the last one is step - 1's."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class KillWhileWritingCheckpoint(L.Callback):
    """Kill the process in the middle of writing the checkpoint of `step`: half of its bytes go to the file
    through the same fsspec transaction Lightning's own writer (`_atomic_save`) uses, then SIGKILL."""

    def __init__(self, step: int):
        self.step = step

    def setup(self, trainer, pl_module, stage) -> None:
        io_ = trainer.strategy.checkpoint_io
        save = io_.save_checkpoint

        def half_then_kill(checkpoint, path, storage_options=None):
            if checkpoint.get("global_step") != self.step:
                return save(checkpoint, path, storage_options)
            data = io.BytesIO()
            torch.save(checkpoint, data)
            fs, target = fsspec.core.url_to_fs(str(path))
            with fs.transaction, fs.open(target, "wb") as f:
                f.write(data.getvalue()[: len(data.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        io_.save_checkpoint = half_then_kill
