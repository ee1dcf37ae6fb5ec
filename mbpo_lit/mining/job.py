"""A mining job: the records of a source mined chunk by chunk into shards, resumable, then filtered and saved.

Output (`MineConfig.out`):
  shards/NNNNNNNN-NNNNNNNN.parquet   every candidate of a chunk of source records (`MinedRow`), written atomically
  skipped.jsonl                      source records that could not be used, with index and reason
  dataset/                           the final pairs: `datasets.load_from_disk(OUT/dataset)`; columns prompt,
                                     chosen, rejected, images (as TRL's DPOTrainer expects for vision data) plus
                                     perturbed_image and the per-pair statistics
  summary.json                       counts, settings, rates (`summarize`) and the image budget applied
  config.json                        the settings that produced the shards

A killed job, restarted with the same settings, continues with the first chunk that has no shard: no duplicates,
no lost pairs. Every random choice is seeded by (seed, chunk start), so a resumed job writes the same dataset as
an uninterrupted one.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from mbpo_lit.core.answers import CLOSED_TYPES, is_correct
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.sources import Record, Records, RecordSource, SourceError, as_source, report_skipped
from mbpo_lit.mining.config import MineConfig, check, settings_json
from mbpo_lit.mining.filters import apply_pair_filter
from mbpo_lit.mining.miner import MinedRow, Miner
from mbpo_lit.mining.prior import PRIOR_COLUMNS, conflicts_with_prior
from mbpo_lit.vlm.arch import pixel_budget

OUTPUTS = ("shards", "dataset", "config.json", "summary.json", "skipped.jsonl")


def mine_pairs(cfg: MineConfig, on_chunk: Callable[[int], None] | None = None, progress: bool = True) -> Path:
    """Mine `cfg.n` records into `cfg.out` (resuming if shards exist) and write the final dataset; returns its
    path. `on_chunk(start)` is called after each shard is written."""
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    check(cfg)
    out = claim_output(cfg)
    source = job_source(cfg)
    records, skipped = source.load()
    read, usable, records = len(records) + len(skipped), len(records), records[: cfg.n]
    (out / "skipped.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
    report_skipped(skipped, source, cfg.bad_records)
    if not records:
        raise SourceError(f"{source}: no usable records to mine")
    policy = load_policy(
        ModelConfig(
            cfg.model,
            precision=cfg.precision,
            quantization=cfg.quantization,
            lora=None,
            adapter_path=cfg.adapter,
            revision=cfg.revision,
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
        )
    )
    miner = Miner(policy.model, policy.processor, cfg, source.vocabulary)
    with datasets_quiet():  # one progress bar, the miner's: none per shard written or read
        started = time.time()
        mined = mine_shards(miner, records, out / "shards", on_chunk, progress)
        seconds = time.time() - started
        candidates, kept, dataset = write_dataset(out, cfg, miner.vocabulary)
    counts = {"source_records_read": read, "skipped": len(skipped), "usable_records": usable}
    summary = summarize(cfg, candidates, kept, miner.vocabulary)
    budget = pixel_budget(policy.processor)  # the image budget the pairs were mined under
    summary |= (
        counts
        | budget
        | {
            "mined_records": len(records),
            "seconds_this_run": seconds,
            "images_per_second": mined / seconds if mined else None,
        }
    )
    (out / "summary.json").write_text(json.dumps(summary_order(summary), indent=2))
    if len(dataset) == 0:
        warnings.warn(
            f"mining kept no pair in {out / 'dataset'}: the verifier accepted every one of the "
            f"{len(candidates)} rejected answers (rejected_wrong: {summary['rejected_wrong']}); a larger --epsilon "
            f"or more --steps perturb harder, or the model already fails these questions on clean images",
            stacklevel=2,
        )
    return out / "dataset"


def claim_output(cfg: MineConfig) -> Path:
    """The output folder, ready for this job: emptied with `overwrite`, refused if it holds another job's shards."""
    out, mine_settings = Path(cfg.out), settings_json(cfg)
    settings = out / "config.json"
    if cfg.overwrite and out.exists():
        for name in OUTPUTS:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    has_shards = any((out / "shards").glob("*.parquet"))
    # Settings bind the shards they produced: a job that stopped before its first shard blocks nothing.
    if has_shards and settings.is_file() and settings.read_text() != mine_settings:
        raise SettingsError(
            f"{out} holds the shards of a mining job with other settings ({settings}); use another --out, "
            f"or --overwrite true to discard them and start over"
        )
    (out / "shards").mkdir(parents=True, exist_ok=True)
    settings.write_text(mine_settings)
    return out


def job_source(cfg: MineConfig) -> RecordSource:
    """The configured source, reading no more than will be mined; `answer_type` applies to a source given as a
    path or hub id."""
    if cfg.answer_type is None:
        source = as_source(cfg.source)
    elif not isinstance(cfg.source, str):
        raise SourceError(
            f"answer_type={cfg.answer_type!r} applies to a source given as a path; "
            f"set the source's own option instead (--source.answer_type {cfg.answer_type})"
        )
    elif cfg.answer_type not in CLOSED_TYPES:
        raise SourceError(f"answer_type={cfg.answer_type!r} is not one of {list(CLOSED_TYPES)}")
    else:
        source = Records(cfg.source, answer_type=cfg.answer_type)
    if getattr(source, "n", 0) is None:  # a copy: the caller's source is unchanged
        source = copy.copy(source)
        source.n = cfg.n
    return source


@contextmanager
def datasets_quiet() -> Iterator[None]:
    """`datasets`' own progress bars off for a while (and back on after, if they were)."""
    import datasets

    was = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was:
            datasets.enable_progress_bars()


def shard_name(start: int, end: int) -> str:
    return f"{start:08d}-{end:08d}.parquet"


def mine_shards(
    miner: Miner,
    records: list[Record],
    shards: Path,
    on_chunk: Callable[[int], None] | None = None,
    progress: bool = True,
) -> int:
    """Mine every chunk of `records` that has no shard in `shards` yet; returns how many records it mined."""
    size = miner.cfg.batch_size
    done = {p.name for p in shards.glob("*.parquet")}
    chunks = [(s, min(s + size, len(records))) for s in range(0, len(records), size)]
    todo = [(s, e) for s, e in chunks if shard_name(s, e) not in done]
    initial = len(records) - sum(e - s for s, e in todo)
    desc = f"mining ({miner.cfg.method})"
    bar = tqdm(total=len(records), initial=initial, desc=desc, unit="record", disable=not progress)
    for s, e in todo:
        chunk = list(records[s:e])  # one chunk's records: each decodes its image once, when the miner reads it
        rows = miner.mine(chunk, s)
        for r, rec in zip(rows, chunk):
            r["source_index"] = rec.get("source_index", r["source_index"])
        write_shard(rows, shards / shard_name(s, e))
        bar.update(e - s)
        if on_chunk:
            on_chunk(s)
    bar.close()
    return sum(e - s for s, e in todo)


def write_shard(rows: list[MinedRow], path: Path) -> None:
    """One chunk's rows as a Parquet file, atomically (a shard is whole or absent): the table
    `Dataset.from_list(rows).to_parquet` writes (same schema, features and rows; row groups may differ), by the
    writer `datasets`' builders use, without building an in-memory dataset (whose fingerprint hashes every image
    of the chunk)."""
    from datasets.arrow_writer import ParquetWriter

    tmp = path.with_name(path.name + ".tmp")
    with ParquetWriter(path=str(tmp)) as writer:
        writer.write_batch({k: [r[k] for r in rows] for k in rows[0]})
        writer.finalize()
    os.replace(tmp, path)


def write_dataset(out: Path, cfg: MineConfig, vocabulary=None):
    """Read every shard, keep the wrong-answer pairs that pass the pair filter (`apply_pair_filter`, with the
    source's `vocabulary`), save them as `out/dataset`; returns (every candidate's scalar columns as dicts, the
    kept ones, the dataset)."""
    from datasets import Dataset, load_dataset

    shards = sorted(str(p) for p in (out / "shards").glob("*.parquet"))
    check_shard_columns(shards)
    allrows = load_dataset("parquet", data_files=shards, split="train") if shards else Dataset.from_list([])
    # Statistics and filtering read the scalar columns only; images are decoded once, when saved.
    stats = allrows.remove_columns([c for c in ("images", "perturbed_image") if c in allrows.column_names])
    candidates = [dict(r) for r in stats]
    kept = apply_pair_filter([r for r in candidates if r["kept"]], cfg, vocabulary)
    keep_ids = {r["source_index"] for r in kept}
    # Only pairs whose rejected answer the verifier refuses: with none, the dataset is empty (and said so).
    dataset = allrows.filter(lambda k, i: bool(k) and i in keep_ids, input_columns=["kept", "source_index"])
    dataset.save_to_disk(str(out / "dataset.tmp"))
    if (out / "dataset").exists():
        shutil.rmtree(out / "dataset")
    os.replace(out / "dataset.tmp", out / "dataset")
    return candidates, kept, dataset


def check_shard_columns(shards: list[str]) -> None:
    """Refuse, naming the shard, shards of one job whose columns differ (a job resumed by a miner that records
    more columns than the one that started it)."""
    import pyarrow.parquet as pq

    first = None
    for shard in shards:
        names = sorted(pq.read_schema(shard).names)
        if first is None:
            first = (shard, names)
        elif names != first[1]:
            raise SettingsError(
                f"{shard} has other columns than {first[0]} (written by another version of the miner): "
                f"mine again with --overwrite true"
            )


def _rate(rows: list[dict], key: str) -> float | None:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else None


def summarize(cfg: MineConfig, candidates: list[dict], kept: list[dict], vocabulary=None) -> dict:
    """The job's counts and rates over every candidate, and the kept pairs cross-tabulated (`pairs_by`)."""
    summary = {
        "method": cfg.method,
        "epsilon": cfg.epsilon,
        "candidates": len(candidates),
        "rejected_wrong": sum(bool(r["kept"]) for r in candidates),
        "pairs": len(kept),
        "pair_filter": cfg.pair_filter,
        "mean_logp_drop": sum(r["logp_before"] - r["logp_after"] for r in candidates) / max(1, len(candidates)),
        "max_linf": max((r["linf"] for r in candidates), default=0.0),
    }
    summary |= prior_conflicts(candidates, vocabulary) | {"pairs_by": cross_tab(kept)}
    if any(r["prior_answer"] for r in candidates):  # only for sources that know the prior's answer
        # Counter-prior records: the prior's answer is known and wrong (a red star when stars are usually blue).
        # How often the answer from the perturbed image is the prior's, over all of them and over those the model
        # answered correctly on the clean image.
        counter = [
            r
            for r in candidates
            if r["prior_answer"] and not is_correct(r["prior_answer"], r["answer"], r["answer_type"], vocabulary)
        ]
        summary |= {
            "prior_rate_counter_prior": _rate(counter, "rejected_is_prior"),
            "prior_rate_counter_prior_clean_correct": _rate(
                [r for r in counter if r["clean_correct"]], "rejected_is_prior"
            ),
            "counter_prior_records": len(counter),
            "counter_prior_clean_correct": sum(r["clean_correct"] for r in counter),
        }
    return summary


def prior_conflicts(candidates: list[dict], vocabulary=None) -> dict:
    """How many wrong-answer candidates conflict with the model's answer without visual evidence, by each reading
    of it (`prior.conflicts_with_prior`), before any IIG rule: what "prior_conflict" can keep at most. Empty for
    shards mined before those answers were recorded."""
    wrong = [r for r in candidates if r["kept"]]
    if not candidates or any(c not in candidates[0] for c in PRIOR_COLUMNS["either"]):
        return {}
    counts = {side: sum(conflicts_with_prior(r, side, vocabulary) for r in wrong) for side in PRIOR_COLUMNS}
    return {"prior_conflict_candidates": counts}


def cross_tab(kept: list[dict]) -> list[dict]:
    """The kept pairs counted by the source's group, clean correctness and, for sources that know the prior's
    answer, whether the rejected answer is the prior's (reporting only: no filter reads these labels)."""
    axes = ["group", "clean_correct"] + (["rejected_is_prior"] if any(r["prior_answer"] for r in kept) else [])
    counts = Counter(tuple(r[a] for a in axes) for r in kept)
    return [dict(zip(axes, key)) | {"pairs": n} for key, n in sorted(counts.items())]


# summary.json's keys in the order a person reads them (the order earlier jobs wrote).
SUMMARY_ORDER = (
    "method epsilon source_records_read skipped usable_records mined_records candidates rejected_wrong pairs "
    "seconds_this_run images_per_second mean_logp_drop max_linf"
).split()


def summary_order(summary: dict) -> dict:
    return {k: summary[k] for k in SUMMARY_ORDER} | {k: v for k, v in summary.items() if k not in SUMMARY_ORDER}
