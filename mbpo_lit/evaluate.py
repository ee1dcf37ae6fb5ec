"""`python -m mbpo_lit.evaluate`: judge-free evaluation of a model (base, or base + adapter).

Runs batched greedy generation over an eval set and reports accuracy per question family and split, the
modality-imbalance gap (in-prior minus counter-prior accuracy), POPE metrics, multiple-choice accuracy,
CHAIR on descriptions, and the Image Information Gain of the ground-truth answers. The eval set is the
embedded world, or any records in the same schema, e.g. a POPE-format file (image, question, yes/no answer)
from a local path or a hub id.

    python -m mbpo_lit.evaluate --model runs/base/.../model --adapter runs/fit/adapter --n 200
    python -m mbpo_lit.evaluate --model DIR --data pope.jsonl --image-root images/
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mbpo_lit.answers import extract, is_correct
from mbpo_lit.chat import encode_prompts, vision_token_ids
from mbpo_lit.metrics import accuracy, chair, pope_metrics
from mbpo_lit.world import FAMILIES, WorldConfig, build_records, parse_mentions

EVAL_SPLITS = ("eval_in_prior", "eval_counter_prior")


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
    """Greedy answers for (image, question) pairs, batched with left padding, with a progress bar."""
    model.eval()
    device = next(model.parameters()).device
    out: list[str] = []
    bar = tqdm(total=len(questions), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(questions), batch_size):
        batch = encode_prompts(processor, questions[start : start + batch_size], images[start : start + batch_size])
        batch = batch.to(device)
        ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             suppress_tokens=vision_token_ids(processor))
        out += processor.batch_decode(ids[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        bar.update(len(batch["input_ids"]))
    bar.close()
    return out


def score(records: Sequence[dict], predictions: Sequence[str], world: WorldConfig | None = None) -> dict:
    """Metrics of predictions against records in the world's schema (see world.FEATURES).

    Returns {"by_family": {family: {...}}, "by_prior": {...}, "pope": {...}, "chair": {...}}; every
    unparseable answer is counted as wrong and reported in "unparseable".
    """
    vocab = world.colors if world else None
    fam: dict[str, list[bool]] = defaultdict(list)
    prior: dict[str, list[bool]] = defaultdict(list)
    unparseable: dict[str, int] = defaultdict(int)
    pope_pred, pope_true, pope_by_type = [], [], defaultdict(lambda: ([], []))
    mentions, truths = [], []
    for rec, pred in zip(records, predictions, strict=True):
        family = rec.get("family") or rec["answer_type"]
        if rec["answer_type"] == "description":
            if world is None:
                raise ValueError(f"record {rec.get('id')!r}: description scoring needs the world's object words")
            mentions.append([f"{c} {k}" if c else k for k, c in parse_mentions(pred, world)])
            # A mention without colour counts as correct when its kind is present (CHAIR on object kinds).
            truths.append(list(rec["objects"]) + [o.split()[-1] for o in rec["objects"]])
            continue
        ok = is_correct(pred, rec["answer"], rec["answer_type"], vocab)
        unparseable[family] += extract(pred, rec["answer_type"], vocab) is None
        fam[family].append(ok)
        prior["in_prior" if rec.get("follows_prior", True) else "counter_prior"].append(ok)
        if rec["answer_type"] == "yes_no":
            p = extract(pred, "yes_no")
            pope_pred.append(p)
            pope_true.append(rec["answer"])
            t = rec.get("pope_type") or "all"
            pope_by_type[t][0].append(p)
            pope_by_type[t][1].append(rec["answer"])
    result: dict = {
        "by_family": {f: {"accuracy": accuracy(v), "n": len(v), "unparseable": unparseable[f]} for f, v in fam.items()},
        "by_prior": {k: {"accuracy": accuracy(v), "n": len(v)} for k, v in prior.items()},
    }
    if "in_prior" in prior and "counter_prior" in prior:
        result["by_prior"]["gap"] = accuracy(prior["in_prior"]) - accuracy(prior["counter_prior"])
    if pope_true:
        result["pope"] = pope_metrics(pope_pred, pope_true)
        result["pope_by_type"] = {t: pope_metrics(p, y) for t, (p, y) in sorted(pope_by_type.items())}
    if mentions:
        result["chair"] = chair(mentions, truths)
    return result


def evaluate_records(
    model, processor, records: Sequence[dict], world: WorldConfig | None = None, batch_size: int = 32,
    max_new_tokens: int = 24, desc: str = "evaluate", progress: bool = True,
) -> tuple[dict, list[str]]:
    """Generate for `records` and score them; returns (metrics, predictions)."""
    preds = generate(model, processor, [r["question"] for r in records], [r["image"] for r in records],
                     batch_size, max_new_tokens, desc, progress)
    return score(records, preds, world), preds


def evaluate_world(
    model, processor, world: WorldConfig, n: int = 200, families: Sequence[str] = FAMILIES,
    batch_size: int = 32, progress: bool = True, with_iig: bool = True,
) -> dict:
    """Evaluate on both eval splits of the world (n records each) and summarise the imbalance gap."""
    from mbpo_lit.iig import image_information_gain

    results: dict = {}
    for split in EVAL_SPLITS:
        records = build_records(world, split, n, tuple(families))
        results[split], _ = evaluate_records(model, processor, records, world, batch_size, desc=split, progress=progress)
        if with_iig:
            closed = [r for r in records if r["answer_type"] != "description"]
            gain = image_information_gain(model, processor, [r["question"] for r in closed],
                                          [r["answer"] for r in closed], [r["image"] for r in closed],
                                          batch_size=batch_size)
            results[split]["iig"] = {"sum": gain.sum.mean().item(), "mean": gain.mean.mean().item()}
    results["summary"] = summarize(results)
    return results


def summarize(results: dict) -> dict:
    """The headline numbers: attribute accuracy in-prior vs counter-prior, their gap, POPE and CHAIR."""
    def get(split, *keys):
        node = results.get(split, {})
        for k in keys:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        return node if not isinstance(node, dict) else None

    out = {
        "in_prior_accuracy": get("eval_in_prior", "by_family", "attribute", "accuracy"),
        "counter_prior_accuracy": get("eval_counter_prior", "by_family", "attribute", "accuracy"),
        "pope_f1": get("eval_counter_prior", "pope", "f1"),
        "pope_yes_ratio": get("eval_counter_prior", "pope", "yes_ratio"),
        "choice_accuracy": get("eval_counter_prior", "by_family", "choice", "accuracy"),
        "chair_s": get("eval_counter_prior", "chair", "chair_s"),
        "chair_i": get("eval_counter_prior", "chair", "chair_i"),
    }
    if out["in_prior_accuracy"] is not None and out["counter_prior_accuracy"] is not None:
        out["gap"] = out["in_prior_accuracy"] - out["counter_prior_accuracy"]
    return out


def format_table(rows: dict[str, dict], columns: Sequence[str] | None = None) -> str:
    """A plain-text table: one row per name, one column per metric (None shown as "-")."""
    columns = list(columns or dict.fromkeys(k for r in rows.values() for k in r))
    width = max([len(n) for n in rows] + [6])
    lines = [" " * width + " | " + " | ".join(f"{c:>14}" for c in columns)]
    for name, row in rows.items():
        cells = [f"{row.get(c):>14.3f}" if isinstance(row.get(c), float) else f"{str(row.get(c, '-')):>14}" for c in columns]
        lines.append(f"{name:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def load_pope_records(source: str, split: str = "test", image_root: str | None = None,
                      column_map: dict[str, str] | None = None) -> list[dict]:
    """Records from POPE-format data (image, question, yes/no answer) in a local file or a hub dataset.

    `column_map` renames source columns to image/question/answer. A record with a missing answer or an
    unreadable image raises an error that names its index.
    """
    from PIL import Image

    from mbpo_lit.data import open_dataset

    path = Path(source)
    data = open_dataset(source, split)
    cmap = {"image": "image", "question": "question", "answer": "answer"} | (column_map or {})
    records = []
    for i, row in enumerate(data):
        answer = row.get(cmap["answer"])
        label = extract(str(answer), "yes_no") if answer is not None else None
        if label is None:
            raise ValueError(f"{source}: record {i} has no yes/no answer (got {answer!r})")
        image = row.get(cmap["image"])
        try:
            if isinstance(image, str):
                image = Image.open(Path(image_root or path.parent) / image)
            image = image.convert("RGB")
        except Exception as err:  # noqa: BLE001 - any unreadable image is reported with its index
            raise ValueError(f"{source}: record {i} has an unreadable image ({err})") from err
        records.append(dict(image=image, question=row[cmap["question"]], answer=label, answer_type="yes_no",
                            family="existence", pope_type=row.get("category", "") or "", follows_prior=True,
                            id=str(row.get("question_id", i))))
    return records


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mbpo_lit.model import ModelConfig, load_policy

    parser = argparse.ArgumentParser(description="Judge-free evaluation of a vision-language model.")
    parser.add_argument("--model", help="checkpoint directory or hub id (default: the embedded biased base model)")
    parser.add_argument("--adapter", help="LoRA adapter directory (peft format) to apply")
    parser.add_argument("--data", default="world", help="'world' or a POPE-format file / hub dataset id")
    parser.add_argument("--split", default="test", help="split of a hub dataset")
    parser.add_argument("--image-root", help="directory that relative image paths in --data are resolved against")
    parser.add_argument("--n", type=int, default=200, help="records per eval split of the world")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--quantization", default="none", choices=["4bit", "8bit", "none"])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    world = WorldConfig()
    model_path = args.model
    if model_path is None:
        from mbpo_lit.warmstart import WarmStartConfig, build_base_model

        model_path = str(build_base_model(WarmStartConfig()))
        world = WarmStartConfig().world
    policy = load_policy(ModelConfig(model_path, precision=args.precision, quantization=args.quantization,
                                     lora=None, adapter_path=args.adapter))
    if args.data == "world":
        results = evaluate_world(policy.model, policy.processor, world, args.n, batch_size=args.batch_size)
        print(format_table({"model": results["summary"]}))
    else:
        records = load_pope_records(args.data, args.split, args.image_root)
        results, _ = evaluate_records(policy.model, policy.processor, records, None, args.batch_size)
        print(format_table({"pope": results["pope"]}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
        print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
