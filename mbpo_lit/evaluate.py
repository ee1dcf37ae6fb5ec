"""`python -m mbpo_lit evaluate`: judge-free evaluation of a model (base, or base + adapter) on an eval set.

Batched greedy generation over any record source (`mbpo_lit.data.sources`: a POPE file, a close-ended VQA
set, AMBER's discriminative queries, COCO images to describe, a hub dataset, or a testbed's own), scored with
the verifier that the rewards use: accuracy overall, per group (e.g. POPE's random / popular / adversarial) and
per question family, POPE accuracy / precision / recall / F1 / yes-ratio on yes/no questions (per subset),
AMBER's discriminative scores ("no" positive) per type on AMBER's queries, and CHAIR_s / CHAIR_i / recall on
descriptions when the source can parse object mentions (`CocoChair`, the world).

    python -m mbpo_lit evaluate --model Qwen/Qwen2.5-VL-7B-Instruct --adapter runs/fit-qwen2_5_vl_7b/adapter \
        --data Records --data.path coco_pope_adversarial.json --data.format pope --data.image_root val2014/
    python -m mbpo_lit evaluate --model DIR --data Records --data.path 'pope/coco_pope_*.json' --data.format pope
    python -m mbpo_lit evaluate --model DIR --data Records --data.path AMBER/data/query/query_discriminative.json \
        --data.format amber --data.image_root AMBER/image/
    python -m mbpo_lit evaluate --model DIR --data CocoChair --data.annotations instances_val2014.json \
        --data.image_root val2014/ --data.n 500 --data.spread true --max_new_tokens 512
    python -m mbpo_lit evaluate --model DIR --data pope.jsonl --out results.json
    python -m mbpo_lit evaluate --model DIR --adapter ADAPTER --compare true --data pope.jsonl   # with vs without

With `--compare true` the model is scored with and without its adapter on the same records, and each metric's
change gets a paired 95% bootstrap interval (`paired_change`), so a change smaller than the eval set's noise reads
as one. `python -m mbpo_lit fit` reports its before/after table the same way.
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from mbpo_lit.core.answers import extract, is_correct
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.core.metrics import accuracy, amber_discriminative, chair, pope_metrics
from mbpo_lit.data import captions  # noqa: F401 - registers CocoChair for `--data CocoChair`
from mbpo_lit.data.sources import RecordSource, SourceError, as_source, report_skipped
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.policy import ModelConfig, load_policy
from mbpo_lit.vlm.shared_prefix import SamplingRule, answer_texts


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    processor,
    questions: Sequence[str],
    images: Sequence,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    desc: str = "generate",
    progress: bool = True,
) -> list[str]:
    """Greedy answers for (image, question) pairs, batched with left padding, with a progress bar; none of the
    checkpoint's `generation_config` processors apply (`shared_prefix.answer_texts`)."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    bar = tqdm(total=len(questions), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(questions), batch_size):
        batch = encode_prompts(processor, questions[start : start + batch_size], images[start : start + batch_size])
        batch = batch.to(device)
        out += answer_texts(model, processor, batch, max_new_tokens, SamplingRule.of(model, processor))
        bar.update(len(batch["input_ids"]))
    bar.close()
    return out


def score(
    records: Sequence[dict],
    predictions: Sequence[str],
    vocabulary: Sequence[str] | None = None,
    mentions: Callable[[str], list[str] | None] | None = None,
) -> dict:
    """Metrics of predictions against records (see `mbpo_lit.data.sources` for the record schema).

    Returns {"all", "by_family", "by_group", "by_cell" (family/group)}, plus "pope" and "pope_by_type" (yes
    positive; per record `pope_type`, else group) on yes/no records, "amber" and "amber_by_type" (AMBER's
    discriminative scores, "no" positive) on records with an `amber_type`, which POPE leaves out, and "chair"
    on descriptions. Answers are read by the shared verifier (`core/answers.py`), with each record's `choices`
    when it has them. Every unparseable answer counts as wrong and is counted in "unparseable".

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
    said, truths = [], []
    for rec, pred in zip(records, predictions, strict=True):
        family, group = rec.get("family") or rec["answer_type"], rec.get("group") or ""
        if rec["answer_type"] == "description":
            found = mentions(pred) if mentions is not None else None
            if found is None:
                raise ValueError(f"record {rec.get('id')!r}: scoring a description needs the source's `mentions`")
            said.append(found)
            truths.append(list(rec["objects"]))
            continue
        choices = rec.get("choices") or None
        ok = is_correct(pred, rec["answer"], rec["answer_type"], vocabulary, choices=choices)
        unparseable[family] += extract(pred, rec["answer_type"], vocabulary, choices=choices) is None
        for kind, key in (("all", "all"), ("family", family), ("group", group), ("cell", f"{family}/{group}")):
            cells[kind][key].append(ok)
        if rec["answer_type"] == "yes_no":
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

    def acc(table: dict[str, list[bool]]) -> dict:
        return {k: {"accuracy": accuracy(v), "n": len(v)} for k, v in sorted(table.items())}

    result: dict = {
        "all": {
            "accuracy": accuracy(cells["all"]["all"]),
            "n": len(cells["all"]["all"]),
            "unparseable": sum(unparseable.values()),
        },
        "by_family": {f: {**a, "unparseable": unparseable[f]} for f, a in acc(cells["family"]).items()},
        "by_group": acc(cells["group"]) if any(cells["group"]) and set(cells["group"]) != {""} else {},
        "by_cell": acc(cells["cell"]),
    }
    if pope_true:
        result["pope"] = pope_metrics(pope_pred, pope_true)
        result["pope_by_type"] = {t: pope_metrics(p, y) for t, (p, y) in sorted(pope_by_type.items())}
    if amber_true:
        result["amber"] = amber_discriminative(amber_pred, amber_true)
        result["amber_by_type"] = {t: amber_discriminative(p, y) for t, (p, y) in sorted(amber_by_type.items())}
    if said:
        result["chair"] = chair(said, truths, kind=_kind_without(vocabulary) if vocabulary else None)
    return result


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
    positive) overall and per type, CHAIR_s / CHAIR_i / recall."""
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
    return out


def evaluate_records(
    model,
    processor,
    records: Sequence[dict],
    vocabulary: Sequence[str] | None = None,
    mentions: Callable[[str], list[str] | None] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    desc: str = "evaluate",
    progress: bool = True,
) -> tuple[dict, list[str]]:
    """Generate for `records` and score them; returns (metrics, predictions)."""
    preds = generate(
        model,
        processor,
        [r["question"] for r in records],
        [r["image"] for r in records],
        batch_size,
        max_new_tokens,
        desc,
        progress,
    )
    return score(records, preds, vocabulary, mentions), preds


def load_eval_set(source: RecordSource, bad_records: Literal["skip", "error"] = "skip") -> tuple[list, list]:
    """An eval set's (records, skipped), the skipped ones reported; an eval set with no usable record is an error."""
    records, skipped = source.load()
    report_skipped(skipped, source, bad_records)
    if not records:
        raise SourceError(f"{source}: no usable records to evaluate")
    return records, skipped


def evaluate_source(
    model,
    processor,
    source: RecordSource,
    vocabulary: Sequence[str] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    bad_records: Literal["skip", "error"] = "skip",
    progress: bool = True,
    loaded: tuple[list, list] | None = None,
) -> dict:
    """Evaluate on an eval set (`loaded`: its `load_eval_set`, if done already) and add the flat `summary` and
    the skipped records to the metrics."""
    records, skipped = loaded or load_eval_set(source, bad_records)
    result, predictions = evaluate_records(
        model,
        processor,
        records,
        source.vocabulary or vocabulary,
        source.mentions,
        batch_size,
        max_new_tokens,
        desc=str(source),
        progress=progress,
    )
    # Skipped records are counted in the summary (and listed under "skipped"), so a table never hides them.
    summary = summarize(result) | {"skipped_records": sum(not s.get("filtered") for s in skipped)}
    answers = [{"id": r.get("id", i), "prediction": p} for i, (r, p) in enumerate(zip(records, predictions))]
    return result | {"summary": summary, "skipped": skipped, "answers": answers}


def paired_change(
    records: Sequence[dict],
    before: Sequence[str],
    after: Sequence[str],
    vocabulary: Sequence[str] | None = None,
    mentions: Callable[[str], list[str] | None] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """How each summary metric moved from `before` to `after` (two models' predictions on the same records),
    with a 95% paired bootstrap interval of the change.

    Each of `n_boot` resamples draws records with replacement, the same draw for both models, scores it whole
    (`score`, so ratios such as F1 and CHAIR_i are recomputed, not averaged) and takes the difference; the
    interval is the 2.5th to 97.5th percentile of those differences. Pairing is what makes a small change
    decidable: both models fail on the same hard records, so the change varies far less than either score.
    On 3,000 world captions (the shipped base model against an MBPO adapter; `evaluate --compare true`, command
    in the README), CHAIR_i 0.056 -> 0.064 is a rise of 0.008 [0.003, 0.012].

    Returns {metric: {before, after, change, ci95_low, ci95_high}}; a metric missing from some resample (a group
    it never drew) gets NaN bounds.
    """
    if not len(records) == len(before) == len(after):
        raise ValueError(f"{len(records)} records but {len(before)} / {len(after)} predictions before / after")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    # Resamples repeat records, so each text is parsed once (the parse dominates scoring descriptions).
    mentions = functools.lru_cache(maxsize=None)(mentions) if mentions is not None else None
    start = summarize(score(records, before, vocabulary, mentions))
    end = summarize(score(records, after, vocabulary, mentions))
    draws: dict[str, list[float]] = defaultdict(list)
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        idx = rng.integers(0, len(records), len(records))
        pick = [records[i] for i in idx]
        b = summarize(score(pick, [before[i] for i in idx], vocabulary, mentions))
        a = summarize(score(pick, [after[i] for i in idx], vocabulary, mentions))
        for k in a.keys() & b.keys():
            draws[k].append(a[k] - b[k])
    out = {}
    for k in start.keys() & end.keys():
        d = draws[k]
        low, high = np.percentile(d, [2.5, 97.5]) if len(d) == n_boot else (float("nan"), float("nan"))
        out[k] = {
            "before": start[k],
            "after": end[k],
            "change": end[k] - start[k],
            "ci95_low": float(low),
            "ci95_high": float(high),
        }
    return {k: out[k] for k in start if k in out}


def change_column(change: dict[str, dict[str, float]]) -> dict[str, str]:
    """`paired_change` as a table column: "+0.008 [+0.003, +0.013]" per metric."""
    return {k: f"{c['change']:+.3f} [{c['ci95_low']:+.3f}, {c['ci95_high']:+.3f}]" for k, c in change.items()}


def format_table(columns: dict[str, dict], metrics: Sequence[str] | None = None) -> str:
    """A plain-text table with one row per metric and one column per name (e.g. before / after); a metric a
    column lacks is shown as "-"."""
    metrics = list(metrics or dict.fromkeys(k for c in columns.values() for k in c))
    width = max([len(m) for m in metrics] + [6])
    cols = {
        name: {m: f"{c[m]:.3f}" if isinstance(c.get(m), float) else str(c.get(m, "-")) for m in metrics}
        for name, c in columns.items()
    }
    widths = {name: max([14, len(name)] + [len(v) for v in col.values()]) for name, col in cols.items()}
    lines = [" " * width + " | " + " | ".join(f"{name:>{widths[name]}}" for name in cols)]
    for m in metrics:
        lines.append(f"{m:<{width}} | " + " | ".join(f"{col[m]:>{widths[name]}}" for name, col in cols.items()))
    return "\n".join(lines)


def evaluate(
    model: str,
    data: RecordSource | str,
    adapter: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto",
    quantization: Literal["4bit", "8bit", "none"] = "none",
    bad_records: Literal["skip", "error"] = "skip",
    compare: bool = False,
    out: str | None = None,
) -> dict:
    """Evaluate a model on an eval set and print the summary table.

    Args:
        model: checkpoint directory or hub id.
        data: the eval set: a path / hub id (this library's record schema), or a source with options, e.g.
            `--data Records --data.path FILE --data.format pope`, or another `RecordSource` class.
        adapter: a LoRA adapter folder (peft format) to apply on top of `model`.
        batch_size, max_new_tokens: greedy generation.
        precision, quantization: how to load `model` ("auto": bf16 on a GPU, fp32 on the CPU).
        bad_records: "skip" (list them and go on) or "error" (list them all and stop).
        compare: with `adapter`, also evaluate `model` without it on the same records, and report the change of
            every metric with its 95% paired bootstrap interval (`paired_change`; under "without_adapter" and
            "change" in `out`): is an adapter's effect beyond the noise of this eval set?
        out: write the metrics (and the skipped records, and every record's answer) as JSON here.
    """
    if compare and adapter is None:
        raise SettingsError("--compare true compares a model with and without an adapter: give --adapter")
    source = as_source(data)
    loaded = load_eval_set(source, bad_records)  # before the model: a data mistake should not wait for a 7B load
    policy = load_policy(
        ModelConfig(model, precision=precision, quantization=quantization, lora=None, adapter_path=adapter)
    )
    results = evaluate_source(policy.model, policy.processor, source, None, batch_size, max_new_tokens, loaded=loaded)
    columns = {str(source): results["summary"]}
    if compare:
        with policy.model.disable_adapter():
            plain = evaluate_source(
                policy.model, policy.processor, source, None, batch_size, max_new_tokens, loaded=loaded
            )
        records, mine = loaded[0], [a["prediction"] for a in results["answers"]]
        theirs = [a["prediction"] for a in plain["answers"]]
        results["without_adapter"] = plain
        results["change"] = paired_change(records, theirs, mine, source.vocabulary, source.mentions)
        columns = {"without adapter": plain["summary"], "with adapter": results["summary"]}
        columns["change [95% CI]"] = change_column(results["change"])
    print(format_table(columns))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2))
        print(f"results written to {out}")
    return results


def main(argv: list[str] | None = None) -> None:
    from mbpo_lit.cli import run_function

    run_function(evaluate, argv)


if __name__ == "__main__":
    main()
