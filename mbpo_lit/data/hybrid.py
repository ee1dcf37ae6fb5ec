"""Hybrid batches for MBPO: offline preference pairs (from mining) and online close-ended prompts.

Each training batch is a dict {"offline": [pair records], "online": [prompt records]} with a fixed number
of each, drawn deterministically from (seed, batch index), where the index counts the run's batches over every
epoch (and rank): a resumed run continues at the checkpoint's batch and sees what the uninterrupted run saw.
Records stay Python dicts with PIL images: the LightningModule encodes them with the policy's processor,
because the rollout (generation) and the log-prob passes must share one encoding (left padding, same
chat template). Online prompts and the validation set come from any `RecordSource` (see sources.py), the
offline pairs from a mining output read as TRL's preference format (`data/trl.Preferences`). The pools hold
records whose images are not decoded (data/lazy.py); a batch gets copies that decode them when the module reads
them, so memory holds a batch's images, not the dataset's.

Bad records are never dropped silently: a record with a missing answer or an unreadable image is reported
by source and index, and then skipped (`bad_records="skip"`, the list is kept in `skipped`) or raised
(`bad_records="error"`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from mbpo_lit.data.lazy import LazyRecords, fresh, image_size
from mbpo_lit.data.sources import RecordSource, SourceError, as_source, report_skipped
from mbpo_lit.data.trl import Preferences

# Lightning warns that an IterableDataset's length may be wrong under several loader workers. The training stream
# is read by the loading process itself (no workers), where its length is exact.
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


def load_pairs(path: str) -> LazyRecords:
    """The usable offline pairs of a mining output (`python -m mbpo_lit mine --out DIR` writes them to
    `DIR/dataset`; either folder may be given), read by `Preferences` (TRL's preference format): records with
    `rejected`, images decoded when used."""
    return pairs_source(path).load()[0]


def pairs_source(path: str) -> Preferences:
    """The `Preferences` source of a mining output; refuses a folder that does not exist, naming the option."""
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"data.pairs {path!r} does not exist (the --out folder of `python -m mbpo_lit mine`)")
    return Preferences(path)


def length_key(record: dict) -> tuple[int, int]:
    """What makes a record's sequences long: image area first (Qwen-VL's image tokens grow with it, read from the
    header when the image is not decoded yet), then the characters of question and answers."""
    w, h = image_size(record)
    text = sum(len(str(record.get(k) or "")) for k in ("question", "answer", "rejected"))
    return w * h, text


class HybridBatches(Dataset):
    """Batch i = `offline_per_batch` pairs and `online_per_batch` prompts, chosen by (seed, i).

    With `group_batches` = M > 1 (length grouping), batches come in blocks of M: a block's M x n records
    are drawn together, sorted by `length_key` and cut into M batches of similar lengths (in a shuffled
    order), so a batch pads its prompts to a near length. Still a function of (seed, i): resumable.
    """

    def __init__(
        self,
        pairs: list[dict],
        prompts: list[dict],
        offline_per_batch: int,
        online_per_batch: int,
        length: int,
        seed: int,
        group_batches: int = 1,
    ):
        self.pairs, self.prompts, self.length, self.seed = pairs, prompts, length, seed
        self.n_off_wanted = offline_per_batch
        self.n_off = offline_per_batch if pairs else 0
        self.n_on = online_per_batch if prompts else 0
        self.group = group_batches

    def __len__(self) -> int:
        return self.length

    def _grouped(self, pool: list[dict], n: int, i: int, stream: int) -> list[dict]:
        """Batch i's n records of one stream under length grouping (see the class docstring)."""
        if not n:
            return []
        block, slot = divmod(i, self.group)
        rng = np.random.default_rng([self.seed, block, stream])
        drawn = rng.choice(len(pool), n * self.group, replace=len(pool) < n * self.group)
        drawn = sorted(drawn, key=lambda j: length_key(pool[j]))
        k = int(rng.permutation(self.group)[slot])
        return [fresh(pool[j]) for j in drawn[k * n : (k + 1) * n]]

    def set_pairs(self, pairs: list[dict]) -> None:
        """Replace the offline pool: batches drawn from now on take their pairs from `pairs` (re-mining)."""
        self.pairs = pairs
        self.n_off = self.n_off_wanted if pairs else 0

    def __getitem__(self, i: int) -> dict:
        if self.group <= 1:  # one generator for both streams (the batches of earlier runs, unchanged)
            rng = np.random.default_rng([self.seed, i])

            def pick(pool: Sequence[dict], n: int) -> list[dict]:
                return [fresh(pool[j]) for j in rng.choice(len(pool), n, replace=len(pool) < n)] if n else []

            return {"offline": pick(self.pairs, self.n_off), "online": pick(self.prompts, self.n_on)}
        return {
            "offline": self._grouped(self.pairs, self.n_off, i, 0),
            "online": self._grouped(self.prompts, self.n_on, i, 1),
        }


class StepBatches(IterableDataset):
    """The training stream of one rank: batch k of the run (counted over every epoch) is `batches[k * world +
    rank]`, a function of (seed, k), so epoch e holds batches e * length ... (e + 1) * length - 1 (not the same
    batches again) and the ranks of a DDP run see different ones.

    A resumed run continues where the checkpoint left off: the data module stores the number of batches
    consumed (`HybridDataModule.state_dict`), and the epoch that holds it starts there instead of at its first
    batch. The position is read from the trainer when an epoch's iteration starts, never counted here, so the
    prefetching of the loader does not shift it.
    """

    def __init__(self, batches: HybridBatches, length: int, position: Callable[[], tuple[int, int, int, int]]):
        self.batches, self.length, self.position = batches, length, position

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[dict]:
        epoch, resume_at, rank, world = self.position()
        first = epoch * self.length
        start = resume_at if first <= resume_at < first + self.length else first
        for k in range(start, first + self.length):
            yield self.batches[k * world + rank]


def interleave_groups(records: list[dict], n: int | None) -> list[dict]:
    """The first n records taking each group in turn (in-prior, counter-prior, in-prior, ...), so a
    validation limited to a few batches still sees every group."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r.get("group") or "", []).append(r)
    out = [g[i] for i in range(max(map(len, groups.values()), default=0)) for g in groups.values() if i < len(g)]
    return out[:n] if n is not None else out


class HybridDataModule(L.LightningDataModule):
    """Offline pairs + online prompts for training, an eval set for validation.

    Args:
        pairs: mined pairs: the `--out DIR` of `python -m mbpo_lit mine`, or its `DIR/dataset`; None
            trains on the online stream only.
        online: close-ended prompts for the online stream: a path / hub id (the library's record schema), a
            `RecordSource` (e.g. `AOKVQA`, or `Records` with a column map), or a list of them (their records
            pooled); None: offline pairs only.
        val: the eval set validated on during training and scored before / after by `python -m mbpo_lit fit`;
            None: no validation. Metrics are named by its records' groups (val/<group>_accuracy).
        offline_per_batch: offline pairs in one training batch.
        online_per_batch: online prompts in one training batch (each sampled G times).
        batches_per_epoch: length of an epoch, in batches.
        length_group_batches: M > 1 draws batches in blocks of M and sorts each block by length (image area,
            then text), so a batch's prompts pad to a near length; 1 (default) draws each batch on its own.
            Worth it for datasets of mixed image sizes.
        val_n: records validated on (taken from the eval set's groups in turn); None: all of them.
        bad_records: "skip" (report and skip) or "error" (report them all and stop).
        seed: of the batches: batch k is drawn from (seed, k), so a resumed run sees what the uninterrupted one
            saw.
    """

    def __init__(
        self,
        pairs: str | None = None,
        online: RecordSource | str | list[RecordSource | str] | None = None,
        val: RecordSource | str | None = None,
        offline_per_batch: int = 2,
        online_per_batch: int = 2,
        batches_per_epoch: int = 200,
        length_group_batches: int = 1,
        val_n: int | None = 64,
        bad_records: Literal["skip", "error"] = "skip",
        seed: int = 0,
    ):
        super().__init__()
        if length_group_batches < 1:
            raise ValueError(f"length_group_batches={length_group_batches}: must be >= 1 (1: no length grouping)")
        self.pairs_path, self.val = pairs, as_source(val)
        self.online = [as_source(s) for s in (online if isinstance(online, list) else [online]) if s is not None]
        self.offline_per_batch, self.online_per_batch = offline_per_batch, online_per_batch
        self.batches_per_epoch, self.length_group_batches = batches_per_epoch, length_group_batches
        self.val_n, self.bad_records, self.seed = val_n, bad_records, seed
        self.skipped: list[dict] = []
        self._resume_at = 0
        self.val_records: list[dict] = []
        self.eval_records: list[dict] = []

    def _load(self, source: RecordSource) -> list[dict]:
        records, skipped = source.load()
        report_skipped(skipped, source, self.bad_records)
        self.skipped += [{"source": str(source), **s} for s in skipped]
        return records

    def read_pairs(self, path: str) -> LazyRecords:
        """The usable pairs of a mining output (`load_pairs`); the others are reported as `bad_records` says."""
        good, skipped = pairs_source(path).load()
        report_skipped(skipped, path, self.bad_records)
        self.skipped += [{"source": str(path), **s} for s in skipped]
        return good

    def set_pairs(self, pairs: list[dict]) -> None:
        """Train on `pairs` from the next step on (e.g. pairs re-mined from the current policy, see
        mbpo_lit/remine.py). The loader draws batch k when step k asks for it: it has no workers and a length, so
        Lightning prefetches nothing, and no batch drawn before the swap holds the old pairs."""
        self.train_set.set_pairs(pairs)

    @property
    def val_groups(self) -> list[str]:
        """The eval set's groups (metric names), known after `setup`."""
        return sorted({r.get("group") or "" for r in self.val_records} - {""})

    def setup(self, stage: str | None = None) -> None:
        self.skipped = []
        pairs = self.read_pairs(self.pairs_path) if self.pairs_path else []
        prompts = [r for source in self.online for r in self._load(source)]
        if not pairs and not prompts:
            raise SourceError("no training data: give data.pairs (mined pairs) and/or data.online (prompts)")
        self.train_set = HybridBatches(
            pairs,
            prompts,
            self.offline_per_batch,
            self.online_per_batch,
            self.batches_per_epoch,
            self.seed,
            self.length_group_batches,
        )
        self.eval_records = self._load(self.val) if self.val is not None else []
        if self.val is not None and not self.eval_records:
            raise SourceError(f"data.val: {self.val} has no usable records (use data.val: null for no validation)")
        self.val_records = interleave_groups(self.eval_records, self.val_n)
        self._write_skipped()

    def _write_skipped(self) -> None:
        """`<default_root_dir>/skipped.jsonl`: every record left out (source, index, id, reason), beside the run's
        other outputs, so a run's data is accounted for after the console is gone."""
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero:
            return
        out = Path(trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "skipped.jsonl").write_text("".join(json.dumps(s, default=str) + "\n" for s in self.skipped))

    def _position(self) -> tuple[int, int, int, int]:
        """(epoch, batches consumed at the checkpoint resumed from, rank, world size) for `StepBatches`."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0, 0, 1
        return trainer.current_epoch, self._resume_at, trainer.global_rank, trainer.world_size

    def train_dataloader(self) -> DataLoader:
        stream = StepBatches(self.train_set, self.batches_per_epoch, self._position)
        return ResumableLoader(stream, self)

    def state_dict(self) -> dict:
        """Saved in every checkpoint: how many training batches this rank has consumed (see `StepBatches`)."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.total.processed if trainer is not None else 0
        return {"batches_consumed": int(done)}

    def load_state_dict(self, state: dict) -> None:
        """Restore the batches consumed from a checkpoint, and say where the training stream resumes."""
        self._resume_at = int(state.get("batches_consumed", 0))
        if self._resume_at and (self.trainer is None or self.trainer.is_global_zero):
            print(f"resuming: the training stream continues at batch {self._resume_at}")

    def val_dataloader(self) -> DataLoader:
        # Copies that decode their own images: the eval set keeps its records undecoded between validations.
        return DataLoader(self.val_records, batch_size=32, shuffle=False, collate_fn=lambda b: [fresh(r) for r in b])


class ResumableLoader(DataLoader):
    """The training loader, with the `state_dict` / `load_state_dict` Lightning looks for to call a loader
    resumable (a mid-epoch checkpoint of a loader without them draws Lightning's "not resumable" warning): its
    state is the data module's (`HybridDataModule.state_dict`: the batches consumed), which `StepBatches` starts
    from, so a resumed run draws the batches the uninterrupted one drew."""

    def __init__(self, stream: StepBatches, data: HybridDataModule):
        super().__init__(stream, batch_size=None, collate_fn=_as_is)
        self.data = data

    def state_dict(self) -> dict:
        return self.data.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.data._resume_at = int(state.get("batches_consumed", 0))  # the data module's, restored (and said) too


def _as_is(batch: dict) -> dict:
    """The collate function of the training loader: a batch is drawn whole by `HybridBatches`."""
    return batch
