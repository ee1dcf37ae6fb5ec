"""Another pair filter over a finished mining job's candidates, without mining again.

A job's shards hold every candidate (kept or not) with the scalar columns the filters read (`mining/filters.py`),
and the filter settings touch nothing the miner computes. So comparing pair filters (`iig` against
`prior_conflict`, say) needs one mining run, not one per filter: `refilter` writes the pairs another filter keeps
into a folder of its own, laid out like a job's (`dataset/`, `summary.json`, `config.json`, the shards linked).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.mining.config import MineConfig, settings_json
from mbpo_lit.mining.job import job_source, summarize, summary_order, write_dataset

# The settings only the pair filter reads: two jobs that differ in nothing else mine the same candidates.
FILTER_FIELDS = ("pair_filter", "prior_from", "iig_filter", "iig_fraction", "iig_threshold")


def candidates_job(cfg: MineConfig, out: str = "") -> MineConfig:
    """The job that mines `cfg`'s candidates into `out`: `cfg` with the filter's settings at their defaults."""
    neutral = {f.name: f.default for f in dataclasses.fields(MineConfig) if f.name in FILTER_FIELDS}
    return dataclasses.replace(cfg, out=out, **neutral)


def candidates_key(cfg: MineConfig) -> str:
    """The settings that decide a job's candidates (all but the filter's and the output folder), as JSON."""
    return settings_json(candidates_job(cfg))


def _candidate_settings(settings: dict) -> dict:
    """A job's settings (its config.json) less the filter's and the output folder."""
    return {k: v for k, v in settings.items() if k not in FILTER_FIELDS and k != "out"}


def refilter(mined: str | Path, cfg: MineConfig) -> Path:
    """Write the pairs `cfg`'s filter keeps of the candidates mined into `mined` to `cfg.out`; returns the
    dataset's path. `cfg` must equal the job's settings but for `FILTER_FIELDS` (and `out`)."""
    mined, out = Path(mined), Path(cfg.out)
    config = mined / "config.json"
    if not config.is_file() or not (mined / "summary.json").is_file():
        raise SettingsError(f"refilter: {mined} holds no finished mining job (no config.json / summary.json)")
    theirs = _candidate_settings(json.loads(config.read_text()))
    ours = _candidate_settings(json.loads(candidates_key(cfg)))
    if differs := sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)):
        raise SettingsError(f"refilter: {mined} was mined with other settings than the pair filter's ({differs})")
    out.mkdir(parents=True, exist_ok=True)
    shards = out / "shards"
    if shards.is_symlink() or shards.exists():
        shards.unlink() if shards.is_symlink() else shutil.rmtree(shards)
    shards.symlink_to((mined / "shards").resolve(), target_is_directory=True)
    (out / "config.json").write_text(settings_json(cfg))
    vocabulary = getattr(job_source(cfg), "vocabulary", None)
    candidates, kept, _ = write_dataset(out, cfg, vocabulary)
    mined_summary = json.loads((mined / "summary.json").read_text())
    summary = mined_summary | summarize(cfg, candidates, kept, vocabulary) | {"refiltered_from": str(mined)}
    (out / "summary.json").write_text(json.dumps(summary_order(summary), indent=2))
    return out / "dataset"
