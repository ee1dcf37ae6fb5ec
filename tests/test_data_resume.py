"""Resuming mid-epoch: the training loader gives Lightning its state (`state_dict` / `load_state_dict`), so a
resumed fit draws the batches the uninterrupted one drew and Lightning does not warn that the loader is "not
resumable"."""

import warnings

import lightning as L
import torch

import benchmark_files as bf
from mbpo_lit.data.hybrid import HybridDataModule
from mbpo_lit.data.sources import Records


class Seen(L.LightningModule):
    """Records the online ids of every training batch; one parameter, so there is something to step."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[str]] = []

    def training_step(self, batch, i):
        self.seen.append([r["id"] for r in batch["online"]])
        return (self.w - 1).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(root, source, steps: int, ckpt_path=None) -> Seen:
    module = Seen()
    data = HybridDataModule(online=source, val=None, online_per_batch=2, batches_per_epoch=3, seed=1)
    checkpoints = L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=steps,
        logger=False,
        callbacks=[checkpoints],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, data, ckpt_path=ckpt_path)
    return module


def test_a_mid_epoch_resume_draws_the_same_batches_without_the_not_resumable_warning(tmp_path, photos):
    source = Records(str(bf.vqa_jsonl(tmp_path / "data", photos)), answer_type="phrase")
    whole = fit(tmp_path / "whole", source, 5).seen
    fit(tmp_path / "cut", source, 2)  # stops at step 2 of a 3-batch epoch: a mid-epoch checkpoint
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = fit(tmp_path / "cut", source, 5, ckpt_path=str(tmp_path / "cut" / "last.ckpt")).seen
    assert resumed == whole[2:] and len(whole) == 5
    assert not [str(w.message) for w in caught if "not resumable" in str(w.message)]
