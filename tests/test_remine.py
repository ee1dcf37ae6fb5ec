"""Re-mining the offline pairs from the current policy (mbpo_lit/remine.py): at step N the callback attacks the pairs'
records again with the policy being trained, trains on the pairs whose attack succeeded from the next step on, logs
its cost, and a fit resumed from a checkpoint trains on the latest re-mined pairs (or re-mines at once if they are
gone)."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from datasets import load_from_disk
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_module import datamodule, module

from mbpo_lit.core.answers import is_correct
from mbpo_lit.data.hybrid import HybridDataModule
from mbpo_lit.mining import Miner
from mbpo_lit.mining.config import mining_folder
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.train.remine import Remine
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.codec import to_raw
from mbpo_lit.vlm.policy import reference_mode, trainable_parameters

COLORS = WorldConfig().colors


def key(records):
    """What tells a pair set from another: (record id, rejected answer) of each pair."""
    return [(r["id"], r["rejected"]) for r in records]


class Watch(Callback):
    """Records the trainable weights and the pairs in use at the end of step `step` (after Remine, which comes
    before it in the callback list), and the offline pairs of the batch of every step (1, 2, ...)."""

    def __init__(self, step: int):
        self.step, self.weights, self.pairs, self.batches = step, None, None, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step and self.weights is None:
            self.weights = {k: v.detach().clone() for k, v in trainable_parameters(pl_module.model).items()}
            self.pairs = list(trainer.datamodule.train_set.pairs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches[trainer.global_step + 1] = key(batch["offline"])


def trainer(root, steps, callbacks, ckpt_every=None):
    extra = (
        [ModelCheckpoint(dirpath=root / "ckpt", save_last=True, every_n_train_steps=ckpt_every)] if ckpt_every else []
    )
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=CSVLogger(root, name="logs"),
        log_every_n_steps=50,  # the remine metrics are written whatever this is
        enable_checkpointing=bool(ckpt_every),
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[*callbacks, *extra],
        default_root_dir=root,
    )


def policy(path):
    """The tiny policy, unquantized (faster on the CPU); lr 5e-2: two steps move it far enough from the base that
    it answers otherwise."""
    m = module(path, loss={"beta": 0.0, "mu": 1}, optim={"lr": 5e-2})
    m.model_config = dataclasses.replace(m.model_config, quantization="none")
    return m


def logged(root, key):
    rows = [r for log in sorted(root.rglob("metrics.csv")) for r in csv.DictReader(log.open())]
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


def test_remine_replaces_the_pairs_with_pairs_mined_from_the_current_policy_and_logs_its_cost(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    remine, watch = Remine(every_n_steps=2), Watch(step=2)
    m, dm = policy(path), datamodule(pairs, offline_per_batch=2)
    trainer(tmp_path, 3, [remine, watch]).fit(m, dm)

    # Re-mined once, after step 2 (not after step 3, the last), and logged at step 2 what it cost and kept.
    assert [h["step"] for h in remine.history] == [2] and remine.history[0]["records"] == len(remine.records)
    folder = tmp_path / "remined" / "step00000002"
    assert remine.current == str(folder) and json.loads((folder / "summary.json").read_text())["pairs"] > 0
    assert logged(tmp_path, "remine/pairs") == [(2, remine.history[0]["pairs"])]
    assert [s for s, _ in logged(tmp_path, "remine/seconds")] == [2] and logged(tmp_path, "remine/seconds")[0][1] > 0

    # The records are the original pairs'; the pairs in use from step 3 on are the re-mined ones: the batch of step 3
    # (drawn when step 3 asks for it, after the swap) holds them, the batch of step 2 the original ones.
    original = dm.read_pairs(pairs)
    assert [r["id"] for r in remine.records] == [r["id"] for r in original]
    new = watch.pairs
    assert new == dm.train_set.pairs and len(new) == remine.history[0]["pairs"] > 0
    assert {r["id"] for r in new} <= {r["id"] for r in original}
    assert set(watch.batches[3]) <= set(key(new)) and set(watch.batches[3]) - set(key(original))
    assert set(watch.batches[2]) <= set(key(original))  # before the re-mining: the original pairs

    # Each new pair: chosen = ground truth, rejected = a wrong answer, and exactly what the policy of step 2 (its
    # trained adapters active) answers on the saved attacked image. The base model answers otherwise.
    saved = {r["id"]: r for r in load_from_disk(str(folder / "part00"))}
    with torch.no_grad():
        for name, p in trainable_parameters(m.model).items():
            p.copy_(watch.weights[name])
    miner = Miner(m.model, m.processor, remine.config(m, pairs, 2))
    differs = 0
    for r in new:
        row = saved[r["id"]]
        assert r["answer"] == row["answer"] == next(o for o in original if o["id"] == r["id"])["answer"]
        assert not is_correct(r["rejected"], r["answer"], r["answer_type"], COLORS)
        prompts = encode_prompts(m.processor, [r["question"]], [r["image"]])
        attacked = to_raw(row["perturbed_image"])[None]
        assert miner.answer(prompts, attacked) == [r["rejected"]]
        with reference_mode(m.model):
            differs += miner.answer(prompts, attacked) != [r["rejected"]]
    assert differs > 0, "the base model gives the same answers: the test cannot tell which policy was attacked"


def test_a_resumed_fit_trains_on_the_latest_re_mined_pairs_or_re_mines_at_once(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    first = Remine(every_n_steps=2)
    trainer(tmp_path, 3, [first], ckpt_every=1).fit(policy(path), datamodule(pairs))
    last = tmp_path / "ckpt" / "last.ckpt"
    state = torch.load(last, weights_only=False)
    assert state["global_step"] == 3 and first.current == str(tmp_path / "remined" / "step00000002")
    in_use = key(read_pairs(first.current))
    assert in_use and set(in_use) != set(key(first.records))

    # Restarted from the checkpoint of step 3: the pairs of the re-mining at step 2, read back, nothing re-mined.
    again, watch = Remine(every_n_steps=2), Watch(step=4)
    dm = datamodule(pairs)
    trainer(tmp_path, 4, [again, watch], ckpt_every=1).fit(policy(path), dm, ckpt_path=str(last))
    assert again.history == [] and again.current == first.current and again.last_step == 2
    assert key(dm.train_set.pairs) == in_use and key(again.records) == key(first.records)
    assert list(watch.batches) == [4] and set(watch.batches[4]) <= set(in_use)
    assert set(watch.batches[4]) - set(key(first.records))

    # The pair set gone: the resumed fit re-mines at once, at the restored step.
    shutil.rmtree(first.current)
    third = Remine(every_n_steps=2)
    with pytest.warns(UserWarning, match="re-mining from the restored policy"):
        trainer(tmp_path, 5, [third], ckpt_every=1).fit(policy(path), datamodule(pairs), ckpt_path=str(last))
    assert [h["step"] for h in third.history] == [4] and (tmp_path / "remined" / "step00000004").is_dir()


def read_pairs(folder):
    """The pairs of a re-mined set, as the data module reads them."""
    return [p for part in sorted(Path(folder).glob("part*")) for p in HybridDataModule().read_pairs(str(part))]


def test_settings_are_the_pairs_own_with_overrides_and_bad_ones_are_refused(tiny_pairs):
    path, pairs = tiny_pairs
    saved = json.loads((mining_folder(pairs) / "config.json").read_text())
    cfg = Remine(every_n_steps=5, mine={"epsilon": 8.0}).config(module(path), pairs, step=10)
    assert (cfg.steps, cfg.method, cfg.batch_size) == (saved["steps"], saved["method"], saved["batch_size"])
    assert cfg.epsilon == 8.0 and cfg.seed == saved["seed"] + 10
    some = Remine(every_n_steps=1, max_records=2)
    some.records = [{}] * 5
    picked = some.chosen(7, 0)
    assert len(picked) == 2 and picked == some.chosen(7, 0) and len(set(picked)) == 2 and max(picked) < 5
    with pytest.raises(ValueError, match="every_n_steps=0"):
        Remine(every_n_steps=0)
    with pytest.raises(ValueError, match="not attack settings"):
        Remine(every_n_steps=1, mine={"n": 3})
