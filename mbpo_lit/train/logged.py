"""What a fit logged, read back from its run directory: one reader for every consumer of curves (`ablate`'s
curves.csv, the notebooks), whichever logger the recipe named.

A fit's logger writes under `trainer.default_root_dir` (`MBPOCLI` fills a logger's unset `save_dir` with it):

  CSVLogger           <root>/lightning_logs/version_N/metrics.csv       read with the csv module
  TensorBoardLogger   <root>/lightning_logs/version_N/events.out.tfevents.*   read with tensorboard's EventAccumulator
  WandbLogger         <root>/wandb/offline-run-*/run-*.wandb            not read: W&B curves are read from W&B

Both readable formats give the same rows, `Logged(step, key, value)`: every value a logger received, with the
`epoch` Lightning logs beside each call, and without TensorBoard's `hp_metric` placeholder (it is not a metric
the run logged). Rows are sorted by (step, key) within each log, logs in version order (a resumed run writes a new
version). A run directory without a readable log raises one line naming the directory and what was looked for, so
a curve is never silently empty.

    from mbpo_lit.train.logged import read_logged
    rows = read_logged("runs/fit-default")                        # the CSV log, or else the TensorBoard one
    loss = [(r.step, r.value) for r in rows if r.key == "loss"]
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Literal, NamedTuple

CSV_FILE = "metrics.csv"
EVENTS_GLOB = "events.out.tfevents.*"
WANDB_GLOB = "*.wandb"
# TensorBoardLogger.log_hyperparams writes this placeholder (-1) unless default_hp_metric is false.
TENSORBOARD_PLACEHOLDERS = frozenset({"hp_metric"})
LOCAL_LOGGERS = "lightning.pytorch.loggers.CSVLogger (or TensorBoardLogger)"

LogFormat = Literal["auto", "csv", "tensorboard"]


class Logged(NamedTuple):
    """One logged value: the trainer's step when it was logged, the metric's key, its value."""

    step: int
    key: str
    value: float


def _version_order(path: Path) -> list:
    """Sort key that puts version_2 before version_10 (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def csv_logs(run_dir: str | Path) -> list[Path]:
    """Every CSVLogger `metrics.csv` under `run_dir`, in version order."""
    return sorted(Path(run_dir).rglob(CSV_FILE), key=_version_order)


def event_dirs(run_dir: str | Path) -> list[Path]:
    """Every directory under `run_dir` holding TensorBoard event files, in version order."""
    return sorted({p.parent for p in Path(run_dir).rglob(EVENTS_GLOB)}, key=_version_order)


def read_csv_log(path: str | Path) -> list[Logged]:
    """The rows of one CSVLogger `metrics.csv` (its `step` column is the step; empty cells are not values)."""
    rows = []
    with open(path, newline="") as f:
        for record in csv.DictReader(f):
            step = int(float(record["step"]))
            rows += [Logged(step, k, float(v)) for k, v in record.items() if k != "step" and v not in ("", None)]
    return sorted(rows, key=lambda r: (r.step, r.key))


def read_event_dir(directory: str | Path) -> list[Logged]:
    """The scalar rows of one TensorBoard log directory (all its event files, no sampling)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ImportError(
            f"{directory} holds TensorBoard event files and tensorboard is not installed: "
            "pip install -e '.[tensorboard]' to read them"
        ) from None
    events = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    rows = [
        Logged(int(e.step), tag, float(e.value))
        for tag in events.Tags()["scalars"]
        if tag not in TENSORBOARD_PLACEHOLDERS
        for e in events.Scalars(tag)
    ]
    return sorted(rows, key=lambda r: (r.step, r.key))


def _missing(run_dir: Path, logger: LogFormat) -> FileNotFoundError:
    """The one-line error for a run directory without a readable log of the kind asked for, W&B's case named."""
    if not run_dir.is_dir():
        return FileNotFoundError(f"{run_dir}: no such run directory (looked for the logs a fit writes there)")
    if next(run_dir.rglob(WANDB_GLOB), None) is not None:
        return FileNotFoundError(
            f"{run_dir}: only W&B logs (*.wandb) here; W&B curves are read from W&B (its web app or API), "
            f"not from local files: for local curves name {LOCAL_LOGGERS} as trainer.logger (a list may hold both)"
        )
    looked_for = {
        "auto": f"{CSV_FILE} (CSVLogger) or {EVENTS_GLOB} (TensorBoardLogger)",
        "csv": f"{CSV_FILE} (CSVLogger)",
        "tensorboard": f"{EVENTS_GLOB} (TensorBoardLogger)",
    }[logger]
    return FileNotFoundError(
        f"{run_dir}: no {looked_for} under it: the run named no such logger (trainer.logger: {LOCAL_LOGGERS}), "
        "or logged nothing (trainer.log_every_n_steps)"
    )


def read_logged(run_dir: str | Path, logger: LogFormat = "auto") -> list[Logged]:
    """Every value a fit logged into `run_dir` (its `trainer.default_root_dir`), from its CSV logs, or, when it
    has none (or `logger="tensorboard"`), from its TensorBoard event files. `logger="csv"` reads only the CSV logs.

    Raises FileNotFoundError, one line naming `run_dir`, when the chosen logs are not there."""
    run_dir = Path(run_dir)
    if logger not in ("auto", "csv", "tensorboard"):
        raise ValueError(f"logger must be 'auto', 'csv' or 'tensorboard', got {logger!r}")
    csvs = csv_logs(run_dir) if logger in ("auto", "csv") else []
    if csvs:
        return [row for path in csvs for row in read_csv_log(path)]
    events = event_dirs(run_dir) if logger in ("auto", "tensorboard") else []
    if events:
        return [row for directory in events for row in read_event_dir(directory)]
    raise _missing(run_dir, logger)
