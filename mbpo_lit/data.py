"""Hybrid batches for MBPO: offline preference pairs (from mining) and online close-ended prompts.

Each training batch is a dict {"offline": [pair records], "online": [prompt records]} with a fixed number
of each, drawn deterministically from (seed, batch index), so a run and its resumption see the same data.
Records stay Python dicts with PIL images: the LightningModule encodes them with the policy's processor,
because the rollout (generation) and the log-prob passes must share one encoding (left padding, same
chat template).

Bad records are never dropped silently: a record with a missing answer or an unreadable image is reported
by source and index, and then skipped (`bad_records="skip"`, the count is kept in `skipped`) or raised
(`bad_records="error"`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from mbpo_lit.world import FAMILIES, WorldConfig, build_records


def _checked(record: dict, needs_rejected: bool = False) -> str | None:
    """Why a record cannot be used, or None if it can."""
    if record.get("answer") is None or str(record["answer"]).strip() == "":
        return "missing answer"
    if needs_rejected and not str(record.get("rejected", "")).strip():
        return "missing rejected answer"
    try:
        image = record["image"]
        image.load() if hasattr(image, "load") else None
        if not hasattr(image, "size"):
            return f"unreadable image ({type(image).__name__})"
    except Exception as err:  # noqa: BLE001 - any decoding failure is reported with its index
        return f"unreadable image ({err})"
    return None


def open_dataset(source: str, split: str = "train"):
    """A `datasets.Dataset` from a local data file (.jsonl/.json/.csv/.parquet), a `save_to_disk` folder,
    or a hub dataset id (its `split`)."""
    from datasets import load_dataset, load_from_disk

    path = Path(source)
    if path.is_file():
        fmt = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix, "json")
        return load_dataset(fmt, data_files=str(path), split="train")
    if path.is_dir():
        return load_from_disk(str(path))
    return load_dataset(source, split=split)


def load_records(
    source: str, split: str = "train", n: int | None = None, columns: dict[str, str] | None = None,
    answer_type: str | None = None,
) -> tuple[list[dict], list[dict]]:
    """Records in the world's schema from a hub dataset id, a local data file or a `save_to_disk` folder.

    `columns` renames source columns to image / question / answer (and answer_type). Returns (records,
    skipped); a record with a missing answer or an unreadable image is skipped *and reported* by index.
    """
    from PIL import Image

    path = Path(source)
    data = open_dataset(source, split)
    c = {"image": "image", "question": "question", "answer": "answer", "answer_type": "answer_type"} | (columns or {})
    records, skipped = [], []
    for i in range(len(data) if n is None else min(n, len(data))):
        try:
            row = data[i]
        except Exception as err:  # noqa: BLE001 - an undecodable row (e.g. a corrupt image) is reported
            skipped.append({"index": i, "reason": f"unreadable record: {err}"})
            continue
        answer, image = row.get(c["answer"]), row.get(c["image"])
        if answer is None or str(answer).strip() == "":
            skipped.append({"index": i, "reason": "missing answer"})
            continue
        try:
            if isinstance(image, str):
                image = Image.open(path.parent / image if path.is_file() else image)
            image = image.convert("RGB")
        except Exception as err:  # noqa: BLE001
            skipped.append({"index": i, "reason": f"unreadable image: {err}"})
            continue
        records.append(dict(image=image, question=row[c["question"]], answer=str(answer),
                            answer_type=row.get(c["answer_type"]) or answer_type or "phrase",
                            follows_prior=bool(row.get("follows_prior", True)), id=str(row.get("id", i)),
                            query_kind=row.get("query_kind", "") or "", source_index=i))
    return records, skipped


def load_pairs(path: str) -> list[dict]:
    """Offline pairs from a mining output (`mine.py` writes `DIR/dataset`), as flat records."""
    from datasets import load_from_disk

    data = load_from_disk(str(Path(path)))
    pairs = []
    for i in range(len(data)):
        try:
            row = data[i]
        except Exception as err:  # noqa: BLE001 - an undecodable row (corrupt image bytes) is reported
            pairs.append({"id": f"{path}#{i}", "_error": f"unreadable record ({err})"})
            continue
        pairs.append({
            "id": row.get("id", str(i)), "image": (row.get("images") or [None])[0], "question": row["question"],
            "answer": row["chosen"][0]["content"][0]["text"] if row.get("chosen") else None,
            "rejected": row["rejected"][0]["content"][0]["text"] if row.get("rejected") else None,
            "answer_type": row.get("answer_type", "phrase"),
        })
    return pairs


def length_key(record: dict) -> tuple[int, int]:
    """What makes a record's sequences long: image area first (Qwen-VL's image tokens grow with it), then
    the characters of question and answers."""
    w, h = record["image"].size
    text = sum(len(str(record.get(k) or "")) for k in ("question", "answer", "rejected"))
    return w * h, text


class HybridBatches(Dataset):
    """Batch i = `offline_per_batch` pairs and `online_per_batch` prompts, chosen by (seed, i).

    With `group_batches` = M > 1 (length grouping), batches come in blocks of M: a block's M x n records
    are drawn together, sorted by `length_key` and cut into M batches of similar lengths (in a shuffled
    order), so a batch pads its prompts to a near length. Still a function of (seed, i): resumable.
    """

    def __init__(self, pairs: list[dict], prompts: list[dict], offline_per_batch: int, online_per_batch: int,
                 length: int, seed: int, group_batches: int = 1):
        self.pairs, self.prompts, self.length, self.seed = pairs, prompts, length, seed
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
        return [pool[j] for j in drawn[k * n:(k + 1) * n]]

    def __getitem__(self, i: int) -> dict:
        if self.group <= 1:  # one generator for both streams (the batches of earlier runs, unchanged)
            rng = np.random.default_rng([self.seed, i])
            pick = lambda pool, n: [pool[j] for j in rng.choice(len(pool), n, replace=len(pool) < n)] if n else []  # noqa: E731
            return {"offline": pick(self.pairs, self.n_off), "online": pick(self.prompts, self.n_on)}
        return {"offline": self._grouped(self.pairs, self.n_off, i, 0),
                "online": self._grouped(self.prompts, self.n_on, i, 1)}


class HybridDataModule(L.LightningDataModule):
    """Offline pairs + online prompts for training, the world's eval splits for validation.

    Args:
        pairs: directory of mined pairs (`python -m mbpo_lit.mine --out DIR` writes `DIR/dataset`); None
            trains on the online stream only.
        online: "world" (the embedded world's train split), "none" (offline pairs only), or a dataset id /
            local file / `save_to_disk` folder of close-ended prompts.
        online_columns, online_answer_type: column renames for `online`, and the answer type when the
            source has no answer_type column ("yes_no", "number", "choice", "phrase").
        online_families: question families of the online stream (close-ended ones).
        n_online: how many distinct online prompts to draw from.
        online_p_color: for online="world": probability that an object of an online scene wears its kind's
            typical colour (None: the world's own `p_color`, 0.9). Below it, more online questions are ones
            the language prior gets wrong, the groups where sampled answers disagree and GRPO has a signal.
        offline_per_batch / online_per_batch: the mix of one training batch.
        batches_per_epoch: length of an epoch, in batches.
        length_group_batches: M > 1 draws batches in blocks of M and sorts each block by length (image area,
            then text), so a batch's prompts pad to a near length; 1 (default) draws each batch on its own.
            Worth it for datasets of mixed image sizes; the embedded world's images are all one size.
        val_n: validation records per eval split (in-prior, counter-prior).
        bad_records: "skip" (report and skip) or "error" (report and stop).
    """

    def __init__(
        self,
        pairs: str | None = None,
        online: str = "world",
        online_columns: dict[str, str] | None = None,
        online_answer_type: str | None = None,
        online_families: tuple[str, ...] = ("attribute",),
        n_online: int = 2000,
        online_p_color: float | None = None,
        offline_per_batch: int = 2,
        online_per_batch: int = 2,
        batches_per_epoch: int = 200,
        length_group_batches: int = 1,
        val_n: int = 64,
        bad_records: Literal["skip", "error"] = "skip",
        world: WorldConfig | None = None,
        seed: int = 0,
    ):
        super().__init__()
        bad = [f for f in online_families if f not in FAMILIES or f == "describe"]
        if bad:
            raise ValueError(f"online_families: {bad} are not close-ended families of {FAMILIES[:-1]}")
        self.pairs_path, self.online, self.families = pairs, online, tuple(online_families)
        self.online_columns, self.online_answer_type = online_columns, online_answer_type
        self.online_p_color = online_p_color
        self.n_online, self.val_n, self.bad_records, self.seed = n_online, val_n, bad_records, seed
        self.offline_per_batch, self.online_per_batch = offline_per_batch, online_per_batch
        self.batches_per_epoch = batches_per_epoch
        if length_group_batches < 1:
            raise ValueError(f"length_group_batches={length_group_batches}: must be >= 1 (1: no length grouping)")
        self.length_group_batches = length_group_batches
        self.world = world
        self.skipped: list[dict] = []

    def _world(self) -> WorldConfig:
        if self.world is None:
            from mbpo_lit.warmstart import default_world

            self.world = default_world()
        return self.world

    def _validated(self, records: list[dict], source: str, needs_rejected: bool = False) -> list[dict]:
        good = []
        for i, rec in enumerate(records):
            why = rec.get("_error") or _checked(rec, needs_rejected)
            if why is None:
                good.append(rec)
                continue
            message = f"{source}: record {i} ({rec.get('id', '?')}): {why}"
            if self.bad_records == "error":
                raise ValueError(message)
            print(f"skipping {message}")
            self.skipped.append({"source": source, "index": i, "id": rec.get("id"), "reason": why})
        return good

    def setup(self, stage: str | None = None) -> None:
        self.skipped = []
        pairs = self._validated(load_pairs(self.pairs_path), str(self.pairs_path), True) if self.pairs_path else []
        prompts = []
        if self.online == "world":
            world = self._world()
            if self.online_p_color is not None:
                world = dataclasses.replace(world, p_color=self.online_p_color)
            prompts = self._validated(build_records(world, "train", self.n_online, self.families), "world/train")
        elif self.online != "none":
            prompts, skipped = load_records(self.online, "train", self.n_online, self.online_columns,
                                            self.online_answer_type)
            for s in skipped:
                message = f"{self.online}: record {s['index']}: {s['reason']}"
                if self.bad_records == "error":
                    raise ValueError(message)
                print(f"skipping {message}")
                self.skipped.append({"source": self.online, **s})
        if not pairs and not prompts:
            raise ValueError("no training data: give pairs=DIR (mined pairs) and/or online='world'")
        self.train_set = HybridBatches(pairs, prompts, self.offline_per_batch, self.online_per_batch,
                                       self.batches_per_epoch, self.seed, self.length_group_batches)
        self.val_records = [r for split in ("eval_in_prior", "eval_counter_prior")
                            for r in build_records(self._world(), split, self.val_n, ("attribute",))]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=None, shuffle=False, collate_fn=lambda b: b)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_records, batch_size=32, shuffle=False, collate_fn=lambda b: b)
