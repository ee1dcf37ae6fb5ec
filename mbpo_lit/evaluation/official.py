"""The official scores of the suites MBPO's paper reports (`mbpo_lit.data.suites`), from judged records.

`scoring.score` judges every record once (MME's records by MME's own reading, `core.answers.parse_yes_no_mme`;
the others by the shared verifier) and hands the judged records of each suite here, by the record's `benchmark`:

* MMStar and AI2D: letter accuracy, overall and per `category` (and `l2_category` where records have one), as
  VLMEvalKit reports them (micro averages: every question counts once).
* MMBench: plain accuracy (every row, i.e. every rotation of every question, counts once) beside circular
  accuracy (VLMEvalKit's mcq_circular_eval): a question, the rows sharing its `mmbench_index`, counts as right
  only if every rotation of its options is answered right; per category and L2 category too.
* MME (its eval_tool/calculation.py): per sub-task, acc (the fraction of its questions right) and acc+ (the
  fraction of its images with both questions right); the sub-task's score is 100 * acc + 100 * acc+ (at most
  200); perception is the sum over the ten perception sub-tasks present, cognition over the four cognition ones.

Groups are whole units: `resample_units` gives the records a bootstrap must draw together (an MME image's pair,
an MMBench question's rotations), and `paired_change` (`intervals`) draws those units, giving each drawn copy its
own number (`draw`), so that a unit drawn twice is two units here, not one unit of twice the rows.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Hashable, Sequence

from mbpo_lit.core.metrics import accuracy
from mbpo_lit.data.sources import Record
from mbpo_lit.data.suites import MME_COGNITION, MME_PERCEPTION

Judged = tuple[Record, bool, int]  # a record, whether its answer is right, the bootstrap draw it belongs to (else 0)


def unit_key(rec: Record) -> Hashable | None:
    """What a record must be resampled together with: MME's (sub-task, image), MMBench's question index; None
    for a record that stands alone."""
    if rec.get("benchmark") == "mme" and rec.get("mme_image") is not None:
        return ("mme", rec.get("category"), rec["mme_image"])
    if rec.get("benchmark") == "mmbench" and rec.get("mmbench_index") is not None:
        return ("mmbench", rec["mmbench_index"])
    return None


def resample_units(records: Sequence[Record]) -> list[list[int]]:
    """The records' indices in resampling units, in order of first appearance: one unit per MME image and per
    MMBench question, every other record a unit of its own (so records without groups resample as rows)."""
    units: list[list[int]] = []
    where: dict[Hashable, int] = {}
    for i, rec in enumerate(records):
        key = unit_key(rec)
        if key is None:
            units.append([i])
            continue
        if key not in where:
            where[key] = len(units)
            units.append([])
        units[where[key]].append(i)
    return units


def _accuracy(judged: Sequence[Judged]) -> dict:
    return {"accuracy": accuracy([ok for _, ok, _ in judged]), "n": len(judged)}


def _split(judged: Sequence[Judged], key: str) -> dict[str, list[Judged]]:
    """The judged records by the value of `key` (records without it left out), sorted by that value."""
    parts: dict[str, list[Judged]] = defaultdict(list)
    for item in judged:
        if item[0].get(key) is not None:
            parts[str(item[0][key])].append(item)
    return dict(sorted(parts.items()))


def category_accuracy(judged: Sequence[Judged]) -> dict:
    """MMStar's and AI2D's scores: {accuracy, n, by_category, by_l2_category} (the tables where records have
    the key)."""
    out = _accuracy(judged)
    for key in ("category", "l2_category"):
        if parts := _split(judged, key):
            out[f"by_{key}"] = {name: _accuracy(part) for name, part in parts.items()}
    return out


def _circular(judged: Sequence[Judged]) -> dict:
    """Plain and circular accuracy of MMBench rows: a question (its draw and index) is right if all its rows are."""
    questions: dict[Hashable, list[bool]] = defaultdict(list)
    for k, (rec, ok, draw) in enumerate(judged):
        index = rec.get("mmbench_index")
        questions[(draw, index) if index is not None else ("row", k)].append(ok)
    return _accuracy(judged) | {
        "circular_accuracy": accuracy([all(oks) for oks in questions.values()]),
        "questions": len(questions),
    }


def circular(judged: Sequence[Judged]) -> dict:
    """MMBench's scores: {accuracy, n, circular_accuracy, questions, by_category, by_l2_category}."""
    out = _circular(judged)
    for key in ("category", "l2_category"):
        if parts := _split(judged, key):
            out[f"by_{key}"] = {name: _circular(part) for name, part in parts.items()}
    return out


def mme(judged: Sequence[Judged]) -> dict:
    """MME's scores: {by_subtask: {task: {acc, acc_plus, score, n, images, incomplete_images}}, perception,
    cognition}. An image is its sub-task, question_id and draw; `incomplete_images` counts those with other than
    MME's two questions (an `n` that cut a pair, a skipped record), whose acc+ counts the questions present."""
    images: dict[tuple, list[bool]] = defaultdict(list)
    for k, (rec, ok, draw) in enumerate(judged):
        images[(str(rec.get("category")), draw, rec.get("mme_image", ("row", k)))].append(ok)
    tasks = sorted({t for t, _, _ in images}, key=lambda t: (MME_PERCEPTION + MME_COGNITION + (t,)).index(t))
    by_task = {}
    for task in tasks:
        pairs = [oks for (t, _, _), oks in images.items() if t == task]
        acc = accuracy([ok for oks in pairs for ok in oks])
        plus = accuracy([all(oks) for oks in pairs])
        by_task[task] = {
            "acc": acc,
            "acc_plus": plus,
            "score": 100 * acc + 100 * plus,
            "n": sum(map(len, pairs)),
            "images": len(pairs),
            "incomplete_images": sum(len(oks) != 2 for oks in pairs),
        }
    out: dict = {"by_subtask": by_task}
    for part, names in (("perception", MME_PERCEPTION), ("cognition", MME_COGNITION)):
        if any(t in by_task for t in names):
            out[part] = sum(by_task[t]["score"] for t in names if t in by_task)
    return out


SCORERS = {"mmstar": category_accuracy, "ai2d": category_accuracy, "mmbench": circular, "mme": mme}


def official_scores(judged: Sequence[Judged]) -> dict:
    """{benchmark: its official scores} for the suites among the judged records (`SCORERS`); {} if none."""
    suites: dict[str, list[Judged]] = defaultdict(list)
    for item in judged:
        if (name := item[0].get("benchmark")) in SCORERS:
            suites[name].append(item)
    return {name: SCORERS[name](part) for name, part in sorted(suites.items())}


def slug(name: str) -> str:
    """A category's name as part of a metric key: "science & technology" -> "science_technology"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def official_summary(result: dict) -> dict[str, float]:
    """The headline keys of a `score` result's official scores: mmstar_accuracy and ai2d_accuracy (and per
    category), mmbench_accuracy, mmbench_circular_accuracy (and per L2 category, else per category),
    mme_perception, mme_cognition and each MME sub-task's score (mme_<sub-task>)."""
    out: dict[str, float] = {}
    for name in ("mmstar", "ai2d"):
        if r := result.get(name):
            out[f"{name}_accuracy"] = r["accuracy"]
            out |= {f"{name}_{slug(c)}_accuracy": v["accuracy"] for c, v in r.get("by_category", {}).items()}
    if r := result.get("mmbench"):
        out |= {"mmbench_accuracy": r["accuracy"], "mmbench_circular_accuracy": r["circular_accuracy"]}
        table = r.get("by_l2_category") or r.get("by_category") or {}
        out |= {f"mmbench_circular_{slug(c)}_accuracy": v["circular_accuracy"] for c, v in table.items()}
    if r := result.get("mme"):
        out |= {f"mme_{part}": r[part] for part in ("perception", "cognition") if part in r}
        out |= {f"mme_{slug(t)}": v["score"] for t, v in r["by_subtask"].items()}
    return out
