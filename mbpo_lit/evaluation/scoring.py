"""Scores of a model's answers against records, by the verifier the rewards use (`core/answers.py`).

`score` gives accuracy overall, per group (e.g. POPE's random / popular / adversarial) and per question family,
POPE accuracy / precision / recall / F1 / yes-ratio on yes/no questions (per subset), AMBER's discriminative
scores ("no" positive) per type on AMBER's queries, and CHAIR_s / CHAIR_i / recall on descriptions when the
source can parse object mentions (`CocoChair`, the world), and the official scores of MMStar, MMBench, AI2D and
MME on their records (`official`). `summarize` flattens it into the headline numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

from mbpo_lit.core.answers import extract, is_correct, parse_yes_no_mme
from mbpo_lit.core.metrics import accuracy, amber_discriminative, chair, pope_metrics
from mbpo_lit.data.sources import Record
from mbpo_lit.evaluation.official import official_scores, official_summary


def score(
    records: Sequence[Record],
    predictions: Sequence[str],
    vocabulary: Sequence[str] | None = None,
    mentions: Callable[[str], list[str] | None] | None = None,
    draws: Sequence[int] | None = None,
) -> dict:
    """Metrics of predictions against records (see `mbpo_lit.data.sources` for the record schema).

    Returns {"all", "by_family", "by_group", "by_cell" (family/group)}, plus "pope" and "pope_by_type" (yes
    positive; per record `pope_type`, else group) on yes/no records, "amber" and "amber_by_type" (AMBER's
    discriminative scores, "no" positive) on records with an `amber_type`, which POPE leaves out, "chair" on
    descriptions, and "mmstar", "mmbench", "ai2d", "mme" (`official.official_scores`) on those suites' records,
    which POPE leaves out too. Answers are read by the shared verifier (`core/answers.py`), with each record's
    `choices` when it has them; MME's by MME's own rule (`parse_yes_no_mme`). Every unparseable answer counts as
    wrong and is counted in "unparseable". `draws`: each record's bootstrap draw (`intervals.paired_change`),
    so that a group drawn twice is scored as two groups.

    Descriptions need `mentions` (text -> object mentions) and records' "objects". A mention names a present
    object when equal to it, or, with a `vocabulary`, when equal to the object less its leading vocabulary
    words: the world's "circle" names its "red circle" (COCO's categories have no vocabulary, so "dog" never
    names a "hot dog").
    """
    cells: dict[str, dict[str, list[bool]]] = {
        "all": defaultdict(list),
        "family": defaultdict(list),
        "group": defaultdict(list),
        "cell": defaultdict(list),
    }
    unparseable: dict[str, int] = defaultdict(int)
    pope_pred, pope_true, pope_by_type = [], [], defaultdict(lambda: ([], []))
    amber_pred, amber_true, amber_by_type = [], [], defaultdict(lambda: ([], []))
    said, truths, judged = [], [], []
    for k, (rec, pred) in enumerate(zip(records, predictions, strict=True)):
        family, group = rec.get("family") or rec["answer_type"], rec.get("group") or ""
        if rec["answer_type"] == "description":
            found = mentions(pred) if mentions is not None else None
            if found is None:
                raise ValueError(f"record {rec.get('id')!r}: scoring a description needs the source's `mentions`")
            said.append(found)
            truths.append(list(rec["objects"]))
            continue
        ok, answer = judge(rec, pred, vocabulary)
        unparseable[family] += answer is None
        judged.append((rec, ok, draws[k] if draws is not None else 0))
        for kind, key in (("all", "all"), ("family", family), ("group", group), ("cell", f"{family}/{group}")):
            cells[kind][key].append(ok)
        if rec["answer_type"] == "yes_no" and rec.get("benchmark") != "mme":
            p = extract(pred, "yes_no")
            if rec.get("amber_type"):
                amber_pred.append(p)
                amber_true.append(rec["answer"])
                amber_by_type[rec["amber_type"]][0].append(p)
                amber_by_type[rec["amber_type"]][1].append(rec["answer"])
                continue
            pope_pred.append(p)
            pope_true.append(rec["answer"])
            t = rec.get("pope_type") or group or "all"
            pope_by_type[t][0].append(p)
            pope_by_type[t][1].append(rec["answer"])
    result = _accuracies(cells, unparseable) | official_scores(judged)
    if pope_true:
        result["pope"] = pope_metrics(pope_pred, pope_true)
        result["pope_by_type"] = {t: pope_metrics(p, y) for t, (p, y) in sorted(pope_by_type.items())}
    if amber_true:
        result["amber"] = amber_discriminative(amber_pred, amber_true)
        result["amber_by_type"] = {t: amber_discriminative(p, y) for t, (p, y) in sorted(amber_by_type.items())}
    if said:
        result["chair"] = chair(said, truths, kind=_kind_without(vocabulary) if vocabulary else None)
    return result


def judge(rec: Record, prediction: str, vocabulary: Sequence[str] | None = None) -> tuple[bool, str | None]:
    """(whether the prediction answers the close-ended record right, the answer read from it or None): by the
    shared verifier with the record's `choices`, or, for MME's records, by MME's own rule (`parse_yes_no_mme`)."""
    if rec.get("benchmark") == "mme":
        answer = parse_yes_no_mme(prediction)
        return answer == rec["answer"], answer
    choices = rec.get("choices") or None
    ok = is_correct(prediction, rec["answer"], rec["answer_type"], vocabulary, choices=choices)
    return ok, extract(prediction, rec["answer_type"], vocabulary, choices=choices)


def _accuracies(cells: dict[str, dict[str, list[bool]]], unparseable: dict[str, int]) -> dict:
    """The accuracy part of `score`'s result: all, by_family (with unparseable counts), by_group, by_cell."""

    def acc(table: dict[str, list[bool]]) -> dict:
        return {k: {"accuracy": accuracy(v), "n": len(v)} for k, v in sorted(table.items())}

    return {
        "all": {
            "accuracy": accuracy(cells["all"]["all"]),
            "n": len(cells["all"]["all"]),
            "unparseable": sum(unparseable.values()),
        },
        "by_family": {f: {**a, "unparseable": unparseable[f]} for f, a in acc(cells["family"]).items()},
        "by_group": acc(cells["group"]) if any(cells["group"]) and set(cells["group"]) != {""} else {},
        "by_cell": acc(cells["cell"]),
    }


def _kind_without(vocabulary: Sequence[str]) -> Callable[[str], str]:
    """object -> the object less its leading vocabulary words ("red circle" -> "circle")."""
    vocab = set(vocabulary)

    def kind(obj: str) -> str:
        parts = obj.split()
        while len(parts) > 1 and parts[0] in vocab:
            parts = parts[1:]
        return " ".join(parts)

    return kind


def summarize(result: dict) -> dict[str, float]:
    """The headline numbers of a `score` result, flat: accuracy, per group, per family (when there are
    several), per family and group (when there are several of both), POPE F1 / yes-ratio, AMBER's F1 (no
    positive) overall and per type, CHAIR_s / CHAIR_i / recall, and the suites' official scores
    (`official.official_summary`: mmstar_accuracy, mmbench_circular_accuracy, mme_perception, ...)."""
    # A caption-only eval set has no close-ended answer: no accuracy, rather than a misleading 0.
    out = {"accuracy": result["all"]["accuracy"]} if result["all"]["n"] else {}
    groups, families = result.get("by_group", {}), result["by_family"]
    out |= {f"{g}_accuracy": v["accuracy"] for g, v in groups.items()}
    if len(families) > 1:
        out |= {f"{f}_accuracy": v["accuracy"] for f, v in families.items()}
        if len(groups) > 1:
            out |= {f"{c}_accuracy": v["accuracy"] for c, v in result["by_cell"].items()}
    if "pope" in result:
        out |= {"pope_f1": result["pope"]["f1"], "pope_yes_ratio": result["pope"]["yes_ratio"]}
    if "amber" in result:
        out |= {"amber_f1": result["amber"]["f1"], "amber_no_ratio": result["amber"]["no_ratio"]}
        out |= {f"amber_{t}_f1": v["f1"] for t, v in result["amber_by_type"].items()}
    if "chair" in result:
        c = result["chair"]
        out |= {"chair_s": c["chair_s"], "chair_i": c["chair_i"], "chair_recall": c["recall"]}
    return out | official_summary(result)
