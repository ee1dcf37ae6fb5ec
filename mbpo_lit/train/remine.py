"""Re-mining the offline pairs from the current policy during training (the ablation's `remine_N` variants).

What: `Remine(every_n_steps=N)`, a Lightning callback. After every N-th optimizer step it takes the records the
offline pairs were mined from (question, ground-truth answer and clean image of every pair the data module loaded
from `data.pairs`), runs the mining step of `python -m mbpo_lit mine` on them again (`mining.Miner`: the same attack,
the same 8-bit round trip, the same verifier) against the policy being trained (its LoRA adapters active, in eval
mode, no gradient to any weight), keeps the records whose attack succeeded (chosen = the ground truth, rejected =
the policy's wrong answer on the attacked image) and trains on those pairs from the next step on
(`HybridDataModule.set_pairs`). When no attack succeeds, the pairs in use stay.

Why: MBPO mines its hard negatives once, from the starting policy. As the policy moves, those negatives stop being
its own failure modes (it may already refuse them, or fail in other ways), so the offline stream goes stale;
re-mining every N steps measures what fresh negatives are worth, at the price of a mining job every N steps.

Attack settings: the pairs' own (the `config.json` that `mine` writes beside its `dataset/`; `MineConfig`'s defaults
where there is none), overridden by `mine` (e.g. `{"steps": 10}`), with the seed offset by the global step so that
each re-mining draws fresh random starts, reproducibly. The IIG filter is not applied again: the records are those
that passed it when the pairs were mined. `max_records` re-mines a random subset of them (drawn from (seed, step)).

Output and cost: each pair set is written as a mining output that `--data.pairs` reads,
`<out>/step{N:08d}/part{rank:02d}` (default out: `<default_root_dir>/remined`), with `summary.json`. Every logger
gets `remine/seconds` (wall clock of the re-mining) and `remine/pairs` (pairs kept; 0: none, the previous ones stay
in use) at step N, written whatever `log_every_n_steps` is; `history` holds the same per re-mining.

Resume: the callback's state in a checkpoint names the pair set in use. A fit resumed from that checkpoint trains on
exactly those pairs, read back from disk (batch k is a function of (seed, k) and the pairs in use, see
`HybridDataModule.set_pairs`), so it continues as the uninterrupted run did. If that folder is gone, it re-mines
at once, from the restored policy.

Under DDP each rank attacks its own share of the records, writes its part, waits for the others, and every rank
then loads every part (written for DDP, tested on one process only).

    python -m mbpo_lit fit --trainer.callbacks+=mbpo_lit.train.remine.Remine --trainer.callbacks.every_n_steps=100
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from mbpo_lit.data.hybrid import HybridDataModule
from mbpo_lit.data.lazy import fresh
from mbpo_lit.mining import MineConfig, Miner
from mbpo_lit.mining.config import budget_mismatch, check, mining_folder
from mbpo_lit.vlm.arch import pixel_budget

# The MineConfig fields that define the attack (the rest name the job: model, source, out, n, ...).
ATTACK_FIELDS = (
    "method",
    "epsilon",
    "step_size",
    "steps",
    "random_start",
    "norm",
    "early_stop",
    "diffusion_t",
    "decode",
    "max_new_tokens",
    "iig_baseline",
    "batch_size",
    "seed",
)


class Remine(Callback):
    """Re-mine the offline pairs from the current policy every `every_n_steps` optimizer steps (module docstring).

    Args:
        every_n_steps: N; re-mines after steps N, 2N, ... (not after the last step of `trainer.max_steps`).
        max_records: attack at most this many of the records each time (a random subset); None: all of them.
        mine: `MineConfig` overrides of the pairs' attack settings, e.g. {"steps": 10}.
        out: where the pair sets go; None: `<default_root_dir>/remined`.
    """

    def __init__(
        self,
        every_n_steps: int,
        max_records: int | None = None,
        mine: dict[str, Any] | None = None,
        out: str | None = None,
    ):
        if every_n_steps < 1 or (max_records is not None and max_records < 1):
            raise ValueError(f"Remine: every_n_steps={every_n_steps} and max_records={max_records} must be >= 1")
        unknown = set(mine or {}) - set(ATTACK_FIELDS)
        if unknown:
            raise ValueError(f"Remine: mine={mine}: {sorted(unknown)} are not attack settings {list(ATTACK_FIELDS)}")
        self.every_n_steps, self.max_records, self.overrides, self.out = every_n_steps, max_records, mine or {}, out
        self.records: list[dict] = []  # the records the pairs of `data.pairs` came from
        self.current: str | None = None  # the re-mined pair set in use (None: data.pairs itself)
        self.last_step = 0  # global step of the latest re-mining
        self.history: list[dict] = []
        self._restored: dict | None = None

    # ------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"step": self.last_step, "path": self.current}

    def load_state_dict(self, state: dict) -> None:
        self._restored = dict(state)  # applied in on_train_start, once the data module is set up

    # ------------------------------------------------------------------------------------- hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not isinstance(trainer.datamodule, HybridDataModule) or not trainer.datamodule.pairs_path:
            raise ValueError("Remine re-mines the offline pairs of a HybridDataModule: give data.pairs")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data: HybridDataModule = trainer.datamodule
        # data.pairs' own (set up anew each fit, not a re-mined set); attacked as copies that decode their image
        # for the chunk only, so the pool's records stay undecoded however often the pairs are re-mined
        self.records = list(data.train_set.pairs)
        state, self._restored = self._restored, None
        if not state or not state.get("path"):
            return
        self.last_step = int(state["step"])
        if Path(state["path"]).is_dir():
            self._use(data, Path(state["path"]))
        else:
            warnings.warn(f"Remine: {state['path']} is gone; re-mining from the restored policy", stacklevel=2)
            self.remine(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self.last_step:
            return  # not an N-th step, or its last micro-batch already re-mined (gradient accumulation)
        if 0 <= trainer.max_steps <= step:
            return  # training ends here: no step would use the pairs
        self.remine(trainer, pl_module)

    # ------------------------------------------------------------------------------------ mining
    def config(self, pl_module: L.LightningModule, pairs_path: str, step: int):
        """The `MineConfig` of the re-mining at `step`: the pairs' attack settings, the overrides, seed + step."""
        saved = mining_folder(pairs_path) / "config.json"
        settings = json.loads(saved.read_text()) if saved.is_file() else {}
        settings = {k: v for k, v in settings.items() if k in ATTACK_FIELDS} | self.overrides
        model_config = getattr(pl_module, "model_config", None)
        model = str(getattr(model_config, "name_or_path", "policy"))
        # The attack runs through the fit's processor, so the re-mined pairs have the fit's image budget.
        budget = {k: getattr(model_config, k, None) for k in ("min_pixels", "max_pixels")}
        processor = getattr(pl_module, "processor", None)  # None before the model is loaded
        if processor is not None and (note := budget_mismatch(mining_folder(pairs_path), pixel_budget(processor))):
            warnings.warn(f"Remine: {note}; re-mining uses the fit's budget", stacklevel=2)
        cfg = MineConfig(model=model, source=pairs_path, out="", **(settings | budget))
        cfg = dataclasses.replace(cfg, seed=cfg.seed + step)
        check(cfg)
        return cfg

    def chosen(self, step: int, seed: int) -> list[int]:
        """Indices of the records attacked at `step`: all, or `max_records` of them drawn from (seed, step)."""
        n = len(self.records)
        if self.max_records is None or self.max_records >= n:
            return list(range(n))
        return sorted(np.random.default_rng([seed, step]).choice(n, self.max_records, replace=False).tolist())

    def attack(self, pl_module: L.LightningModule, cfg, indices: list[int]) -> list[dict]:
        """`mining.Miner` rows (kept or not) for the records at `indices`, against the current policy.

        The policy is in eval mode with every weight frozen while it runs (Miner's own setting); each module's
        mode and each parameter's `requires_grad` are put back afterwards, and the process's random state too.
        """
        model = pl_module.model
        modes = [(m, m.training) for m in model.modules()]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        device = next(model.parameters()).device
        rows: list[dict] = []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.enable_grad():
                miner = Miner(model, pl_module.processor, cfg, getattr(pl_module, "vocabulary", None))
                for s in range(0, len(indices), cfg.batch_size):
                    chunk = indices[s : s + cfg.batch_size]
                    for i, row in zip(chunk, miner.mine([fresh(self.records[i]) for i in chunk], chunk[0])):
                        rows.append(row | {"source_index": i})
        finally:
            for m, mode in modes:
                m.train(mode)
            for p, flag in flags:
                p.requires_grad_(flag)
        return rows

    def remine(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Re-mine now (at `trainer.global_step`), write the pair set, train on it from the next step, log."""
        from datasets import Dataset

        data: HybridDataModule = trainer.datamodule
        step, rank, world = trainer.global_step, trainer.global_rank, trainer.world_size
        started = time.time()
        cfg = self.config(pl_module, data.pairs_path, step)
        indices = self.chosen(step, cfg.seed)
        rows = self.attack(pl_module, cfg, indices[rank::world])
        kept = [r for r in rows if r["kept"]]
        folder = Path(self.out or Path(trainer.default_root_dir) / "remined") / f"step{step:08d}"
        part = folder / f"part{rank:02d}"
        shutil.rmtree(part, ignore_errors=True)  # a part of an earlier, killed run at this step
        if kept:
            tmp = folder / f"part{rank:02d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            Dataset.from_list(kept).save_to_disk(str(tmp))
            os.replace(tmp, part)  # atomic: a part is whole or absent
        trainer.strategy.barrier()
        n_pairs = self._use(data, folder)
        seconds = time.time() - started
        self.last_step = step
        entry = {"step": step, "seconds": seconds, "records": len(indices), "pairs": n_pairs, "path": self.current}
        self.history.append(entry)
        if trainer.is_global_zero:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "summary.json").write_text(json.dumps(entry | {"settings": dataclasses.asdict(cfg)}, indent=2))
            for logger in trainer.loggers:
                logger.log_metrics({"remine/seconds": seconds, "remine/pairs": float(n_pairs)}, step=step)

    def _use(self, data: HybridDataModule, folder: Path) -> int:
        """Train on the pairs of every part in `folder` from the next step on; their number (0: none, the pairs
        in use stay)."""
        pairs = [p for part in sorted(folder.glob("part[0-9][0-9]")) for p in data.read_pairs(str(part))]
        if pairs:
            data.set_pairs(pairs)
            self.current = str(folder)
        return len(pairs)
