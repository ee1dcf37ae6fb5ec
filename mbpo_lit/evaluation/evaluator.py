"""Batched greedy evaluation of a model (base, or base + adapter) on any record source.

`evaluate_model` is `python -m mbpo_lit evaluate`: an eval set's records (`mbpo_lit.data`: POPE's files, AMBER's
discriminative queries, COCO images to describe, a close-ended VQA set, a hub dataset, a testbed's own), greedy
answers in batches, scored by `scoring.score`. With `compare` the model is also scored without its adapter on the
same records, and each metric's change gets a paired 95% bootstrap interval (`intervals.paired_change`), so a
change smaller than the eval set's noise reads as one. `before_after` does the same for a fit's starting and
trained policy.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.lazy import Images
from mbpo_lit.data.sources import Record, RecordSource, SourceError, as_source, report_skipped
from mbpo_lit.evaluation.intervals import paired_change
from mbpo_lit.evaluation.scoring import score, summarize
from mbpo_lit.evaluation.tables import change_column, format_table
from mbpo_lit.vlm.arch import budget_problems
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.policy import ModelConfig, load_policy, reference_mode
from mbpo_lit.vlm.sampling import SamplingRule, answer_texts


@torch.no_grad()
def greedy_answers(
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
    checkpoint's `generation_config` processors apply (`sampling.answer_texts`)."""
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


def evaluate_records(
    model,
    processor,
    records: Sequence[Record],
    vocabulary: Sequence[str] | None = None,
    mentions: Callable[[str], list[str] | None] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 24,
    desc: str = "evaluate",
    progress: bool = True,
) -> tuple[dict, list[str]]:
    """Generate for `records` and score them; returns (metrics, predictions)."""
    preds = greedy_answers(
        model,
        processor,
        [r["question"] for r in records],
        Images(records),  # decoded a batch at a time, not all at once
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


def before_after(model, processor, source: RecordSource, records: Sequence[Record], vocabulary=None, n_boot=200):
    """Scores of a fit's starting policy (the reference, `vlm.policy.reference_mode`) and its trained policy on
    the eval set, the change of each summary metric with its 95% paired bootstrap interval, and every record's
    two answers (so a change can be read, not only counted)."""
    vocabulary = source.vocabulary or vocabulary
    results, preds = {}, {}
    for name, context in (("before", reference_mode(model)), ("after", nullcontext())):
        with context:
            metrics, preds[name] = evaluate_records(
                model, processor, records, vocabulary, source.mentions, desc=f"{name}: {source}"
            )
        results[name] = metrics | {"summary": summarize(metrics)}
    results["change"] = paired_change(records, preds["before"], preds["after"], vocabulary, source.mentions, n_boot)
    results["answers"] = [
        {"id": r.get("id", i), "question": r["question"], "answer": r.get("answer"), "before": b, "after": a}
        for i, (r, b, a) in enumerate(zip(records, preds["before"], preds["after"], strict=True))
    ]
    return results


@dataclass
class EvalConfig:
    """Judge-free evaluation of a model (+ adapter) on an eval set."""

    model: str
    """checkpoint directory or hub id."""
    data: RecordSource | str
    """the eval set: a path / hub id in this library's record schema, or a source with options, e.g.
    `--data Pope --data.path FILE --data.image_root val2014/`, or any `RecordSource` class_path."""
    adapter: str | None = None
    """a LoRA adapter folder (peft format) to apply on top of `model`."""
    revision: str | None = None
    """hub revision (branch, tag or commit) of `model` where it is a hub id."""
    batch_size: int = 32
    """prompts per generation batch."""
    max_new_tokens: int = 24
    """longest answer (descriptions scored by CHAIR want hundreds)."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """how to load `model`: "auto" is bf16 on a GPU and fp32 on the CPU."""
    quantization: Literal["4bit", "8bit", "none"] = "none"
    """load `model` quantized by bitsandbytes, or not."""
    min_pixels: int | None = None
    """the image budget's floor, in pixels per image (Qwen-VL upscales smaller images to it; None: the
    checkpoint's own)."""
    max_pixels: int | None = None
    """the image budget's cap, in pixels per image: Qwen-VL downscales larger images to at most this area, at most
    max_pixels / 784 tokens each (None: the checkpoint's own). Evaluate a fit under its training budget (the 7B
    recipes: 1003520). LLaVA's one image size (336x336) ignores a budget it meets and refuses one it breaks."""
    bad_records: Literal["skip", "error"] = "skip"
    """unusable records: "skip" (list them and go on) or "error" (list them all and stop)."""
    compare: bool = False
    """with `adapter`, also evaluate `model` without it on the same records, and report each metric's change
    with its 95% paired bootstrap interval (under "without_adapter" and "change" in `out`)."""
    out: str | None = None
    """write the metrics, the skipped records and every record's answer as JSON here."""


def evaluate_model(cfg: EvalConfig) -> dict:
    """Evaluate a model on an eval set and print the summary table (`python -m mbpo_lit evaluate`)."""
    if cfg.compare and cfg.adapter is None:
        raise SettingsError("--compare true compares a model with and without an adapter: give --adapter")
    if problems := budget_problems(cfg.min_pixels, cfg.max_pixels, cli=True):
        raise SettingsError("; ".join(problems))
    source = as_source(cfg.data)
    loaded = load_eval_set(source, cfg.bad_records)  # before the model: a data mistake should not wait for a 7B load
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
    model, processor, settings = policy.model, policy.processor, (None, cfg.batch_size, cfg.max_new_tokens)
    results = evaluate_source(model, processor, source, *settings, loaded=loaded)
    columns = {str(source): results["summary"]}
    if cfg.compare:
        with model.disable_adapter():
            plain = evaluate_source(model, processor, source, *settings, loaded=loaded)
        records, mine = loaded[0], [a["prediction"] for a in results["answers"]]
        theirs = [a["prediction"] for a in plain["answers"]]
        results["without_adapter"] = plain
        results["change"] = paired_change(records, theirs, mine, source.vocabulary, source.mentions)
        columns = {"without adapter": plain["summary"], "with adapter": results["summary"]}
        columns["change [95% CI]"] = change_column(results["change"])
    print(format_table(columns))
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps(results, indent=2))
        print(f"results written to {cfg.out}")
    return results
