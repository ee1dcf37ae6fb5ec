"""`python -m mbpo_lit mine`: offline adversarial negative mining, MBPO's offline half.

For each (image, question, ground-truth answer): perturb the image (PGD that minimises the ground-truth
log-likelihood, or a noise baseline at the same budget), let the model answer from the perturbed image, and
keep the pair (chosen = ground truth, rejected = that answer) when the answer is wrong under the same
verifier the rewards use. The Image Information Gain of the chosen answer on the clean image is recorded
and filters the pairs (keep high, low, or all).

Output (`--out DIR`):
  shards/NNNNNNNN-NNNNNNNN.parquet   every candidate of a chunk of source records, written atomically
  skipped.jsonl                      source records that could not be used, with index and reason
  dataset/                           the final pairs: `datasets.load_from_disk(DIR/dataset)`; columns
                                     prompt, chosen, rejected, images (as TRL's DPOTrainer expects for vision
                                     data) plus perturbed_image and the per-pair statistics
  summary.json                       counts, settings, and the rates reported in the README

A killed job, restarted with the same arguments, continues with the first chunk that has no shard: no
duplicates, no lost pairs. Every random choice is seeded by (seed, chunk start), so a resumed run writes
the same dataset as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from mbpo_lit.core.answers import CLOSED_TYPES, is_correct, normalize_phrase
from mbpo_lit.core.attack import METHODS, pgd, random_perturbation, to_uint8_grid
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.sources import Records, RecordSource, SourceError, as_source, report_skipped
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts, user_message
from mbpo_lit.vlm.codec import PixelCodec, to_pil
from mbpo_lit.vlm.iig import image_information_gain
from mbpo_lit.vlm.logprobs import completion_scores
from mbpo_lit.vlm.shared_prefix import SamplingRule, answer_texts


@dataclass
class MineConfig:
    """Settings of one mining job (every field is a command-line option: --epsilon 8 ...).

    Args:
        model: base model directory or hub id.
        adapter: optional LoRA adapter (peft format) on top of `model`.
        source: the records to mine: a path / hub id in the library's record schema, or a `RecordSource`
            with options (`--source Records --source.path F --source.format vqav2`, or another class_path).
        out: output directory (shards, skipped.jsonl, dataset/, summary.json); a killed job resumes in it.
        n: how many usable source records to mine (the first n the source gives); a source without an `n` of
            its own reads only n records.
        method: "pgd" or a baseline: "uniform", "gaussian", "diffusion", "none".
        epsilon, step_size: L-inf budget and PGD step, in /255 units. The default 32/255 suits the synthetic
            world (its images carry pixel noise); real 7B models are usually attacked at 8-16/255.
        answer_type: answer type of records whose source has none, for a `source` given as a path or hub id
            ("yes_no", "number", "choice", "phrase"; a source's own `answer_type` column wins). It picks the
            verifier (core/answers.py) that decides whether a rejected answer is wrong.
        steps: PGD steps; early_stop stops a sample once the model's greedy answer, decoded from the 8-bit
            perturbed image and judged by the verifier, is wrong (so "Yes." for ground truth "yes" is correct).
        random_start: start PGD from a uniform point in the ball; norm: "linf" or "l2" ball.
        max_new_tokens: longest rejected answer decoded from the perturbed image.
        diffusion_t: forward-diffusion step of the "diffusion" baseline.
        decode: "greedy" or "sample" (temperature 1) for the rejected answer.
        iig_filter: keep "high" or "low" IIG pairs, or "none" (no filter); iig_fraction is the share kept,
            or iig_threshold (if set) the cut-off; iig_baseline is IIG's no-image side ("none"/"neutral").
        batch_size: records per chunk (one shard each); seed: of every random choice, per chunk.
        precision: of the model: "auto" is bf16 on a GPU and fp32 on the CPU.
        quantization: "4bit" / "8bit" load the model quantized (bitsandbytes), as a 7B model fits a
            workstation GPU; "none" keeps `precision`. PGD needs no trainable weights, only pixel gradients.
        bad_records: unusable source records (empty question, missing answer, unreadable image, ...) are listed
            with index, id and reason in `out/skipped.jsonl` and counted in the summary; "skip" goes on
            without them, "error" stops after listing them all.
        overwrite: discard the shards and settings of an earlier job in `out` (with other settings) and start over.
    """

    model: str
    source: RecordSource | str
    out: str = "runs/mined"
    adapter: str | None = None
    n: int = 256
    answer_type: str | None = None
    method: Literal["pgd", "uniform", "gaussian", "diffusion", "none"] = "pgd"
    # The embedded world's images carry pixel noise of std 0.08 (20/255), so its model shrugs off 8/255:
    # measured, PGD at 8/255 moved the ground-truth log-likelihood by 0.15 nats in 20 steps and flipped 1 of
    # 13 correct answers; 32/255 flipped 13 of 19. Real 7B models are attacked at 8-16/255 (see the recipes).
    epsilon: float = 32.0
    step_size: float = 4.0
    steps: int = 20
    random_start: bool = True
    norm: Literal["linf", "l2"] = "linf"
    early_stop: bool = True
    diffusion_t: int = 200
    decode: Literal["greedy", "sample"] = "greedy"
    max_new_tokens: int = 16
    iig_filter: Literal["high", "low", "none"] = "high"
    iig_fraction: float = 0.5
    iig_threshold: float | None = None
    iig_baseline: Literal["none", "neutral"] = "none"
    batch_size: int = 16
    seed: int = 0
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    quantization: Literal["none", "4bit", "8bit"] = "none"
    overwrite: bool = False
    bad_records: Literal["skip", "error"] = "skip"


def settings_json(cfg: MineConfig) -> str:
    """The job's settings as JSON (a source as its class and options), to refuse mixing two jobs in one --out."""

    def plain(o):
        return {"class": type(o).__name__, **vars(o)} if isinstance(o, RecordSource) else str(o)

    # `overwrite` is how to start over, not a property of the job's data.
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "overwrite"}
    return json.dumps(settings, sort_keys=True, default=plain)


class Miner:
    """Mines one chunk of records at a time with a loaded policy (see `MineConfig`)."""

    def __init__(self, model: torch.nn.Module, processor, cfg: MineConfig, vocabulary: list[str] | None = None):
        self.model, self.processor, self.cfg, self.vocabulary = model.eval(), processor, cfg, vocabulary
        self.codec = PixelCodec.from_processor(processor)
        self.device = next(model.parameters()).device
        model.requires_grad_(False)  # PGD needs gradients for the pixels only

    def loglik(self, prompts, answers_ids) -> Callable[[torch.Tensor], torch.Tensor]:
        """images -> the ground-truth answer's log-likelihood per sample (differentiable in the images)."""
        batch, mask = append_completions(prompts, answers_ids, self.processor.tokenizer.pad_token_id)
        batch, mask = batch.to(self.device), mask.to(self.device)

        def value(images: torch.Tensor) -> torch.Tensor:
            pixel_values, _ = self.codec.encode(images)
            inputs = dict(batch, pixel_values=pixel_values.to(batch["pixel_values"].dtype))
            return completion_scores(self.model, inputs, mask)[0].sum(1)

        return value

    @torch.no_grad()
    def answer(self, prompts, images: torch.Tensor, sample: bool = False) -> list[str]:
        """The model's answers given raw images: greedy, or sampled at temperature 1.

        Decoding applies none of the checkpoint's `generation_config` processors (Qwen's repetition penalty,
        say): only vision tokens are suppressed, and it stops at any of the model's end ids
        (`shared_prefix.answer_texts`). A mined answer is the model's own distribution on every checkpoint.
        """
        pixel_values, _ = self.codec.encode(images)
        batch = dict(prompts.to(self.device), pixel_values=pixel_values.to(prompts["pixel_values"].dtype))
        rule = SamplingRule.of(self.model, self.processor, temperature=1.0 if sample else 0.0)
        return answer_texts(self.model, self.processor, batch, self.cfg.max_new_tokens, rule)

    def is_wrong(self, rec: dict, text: str) -> bool:
        """Whether a rejected answer is wrong: the verifier for close-ended types, else a different phrase.

        An answer that is the ground truth's own text is never wrong, even where the verifier cannot parse
        either (a pair whose rejected answer equals its chosen one would push the right answer down)."""
        if text.strip().lower() == str(rec["answer"]).strip().lower():
            return False
        if rec["answer_type"] in CLOSED_TYPES:
            return not is_correct(text, rec["answer"], rec["answer_type"], self.vocabulary, **_choices(rec))
        return normalize_phrase(text) != normalize_phrase(rec["answer"])

    def objective(
        self, prompts, answers_ids, records: list[dict] | None = None, raw: torch.Tensor | None = None
    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """PGD's objective: images -> (ground-truth log-likelihood, whether the model still answers correctly).

        "Still correct" is the verifier's judgement of the greedy answer decoded from the images rounded to
        8 bits inside the ball around `raw` (the picture that will be saved), so an answer worded unlike the
        ground truth ("Yes." for "yes") is not mistaken for a successful attack. Without `records` (or with
        early_stop off) nothing is decoded and every sample counts as not yet successful.
        """
        loglik, eps = self.loglik(prompts, answers_ids), self.cfg.epsilon / 255

        def value(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logp = loglik(images)
            if records is None or not self.cfg.early_stop:
                return logp, torch.ones(len(logp), dtype=torch.bool)
            base = raw if raw is not None else images.detach()
            texts = self.answer(prompts, to_uint8_grid(images.detach(), base, eps, self.cfg.norm))
            return logp, torch.tensor([not self.is_wrong(r, t) for r, t in zip(records, texts)])

        return value

    def mine(self, records: list[dict], start: int) -> list[dict]:
        """Candidate pairs (kept or not, with the reason) for one chunk of records, in their order.

        PGD perturbs a batch of images of one size, so a chunk of mixed sizes (real photographs under Qwen's
        processor, which keeps each image's resolution) is mined one size at a time; a chunk of one size (the
        synthetic world) is one batch, exactly as before.
        """
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, rec in enumerate(records):
            by_size.setdefault(tuple(rec["image"].size), []).append(i)
        if len(by_size) == 1:
            return self.mine_batch(records, start)
        rows: list[dict | None] = [None] * len(records)
        for indices in by_size.values():
            # Each size group is seeded by its first record's position, so the result does not depend on the
            # other records of the chunk.
            for i, row in zip(indices, self.mine_batch([records[i] for i in indices], start + indices[0])):
                rows[i] = row | {"source_index": start + i}
        return rows

    def mine_batch(self, records: list[dict], start: int) -> list[dict]:
        """`mine` for records whose images have one size (PGD runs on them as one batch).

        Every image the model answers from, and every score recorded, is the 8-bit one (`to_uint8_grid`): the
        saved `perturbed_image` reproduces the recorded rejected answer and `logp_after`.
        """
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
        torch.manual_seed(cfg.seed * 1_000_003 + start)  # sampled decoding, if chosen
        qs, answers = [r["question"] for r in records], [r["answer"] for r in records]
        images = [r["image"] for r in records]
        prompts = encode_prompts(self.processor, qs, images, record_ids=[r["id"] for r in records])
        eps, step = cfg.epsilon / 255, cfg.step_size / 255
        raw = torch.stack(self.codec.raw_images(prompts)).to(self.device)
        raw = to_uint8_grid(raw, raw, 0.0)
        answer_ids = answer_token_ids(self.processor, answers)
        loglik = self.loglik(prompts, answer_ids)
        with torch.no_grad():  # the ground truth's log-likelihood on the clean image
            before = loglik(raw).cpu()
        clean = self.answer(prompts, raw)
        if cfg.method == "pgd":
            objective = self.objective(prompts, answer_ids, records, raw)
            res = pgd(objective, raw, eps, step, cfg.steps, cfg.random_start, cfg.norm, cfg.early_stop, gen)
            perturbed, steps_used = res.images, res.steps_used
        else:
            perturbed = random_perturbation(cfg.method, raw, eps, cfg.diffusion_t, gen)
            steps_used = torch.zeros(len(records), dtype=torch.long)
        # The diffusion baseline is not bounded by epsilon: round it without projecting.
        bound = eps if cfg.method != "diffusion" else 1.0
        perturbed = to_uint8_grid(perturbed, raw, bound, cfg.norm if cfg.method == "pgd" else "linf")
        with torch.no_grad():
            after = loglik(perturbed).cpu()
        rejected = self.answer(prompts, perturbed, sample=cfg.decode == "sample")
        iig = image_information_gain(
            self.model, self.processor, qs, answers, images, cfg.iig_baseline, batch_size=cfg.batch_size
        )
        rows = []
        for i, rec in enumerate(records):
            wrong = self.is_wrong(rec, rejected[i])
            prior = rec.get("prior_answer") or ""  # the language prior's answer, where the source knows it
            rows.append(
                {
                    "id": rec["id"],
                    "source_index": start + i,
                    "prompt": user_message(rec["question"]),
                    "chosen": [{"role": "assistant", "content": [{"type": "text", "text": rec["answer"]}]}],
                    "rejected": [{"role": "assistant", "content": [{"type": "text", "text": rejected[i]}]}],
                    "images": [rec["image"]],
                    "perturbed_image": to_pil(perturbed[i]),
                    "question": rec["question"],
                    "answer": rec["answer"],
                    "answer_type": rec["answer_type"],
                    # A multiple-choice record's options (JSON, "[]" for none: one column type in every shard),
                    # so that its pair is judged, and re-mined, with the options' texts as the source gave them.
                    "choices": json.dumps(list(rec.get("choices") or [])),
                    "group": rec.get("group") or "",
                    "prior_answer": prior,
                    "clean_answer": clean[i],
                    "clean_correct": not self.is_wrong(rec, clean[i]),
                    "rejected_is_prior": bool(prior)
                    and is_correct(rejected[i], prior, rec["answer_type"], self.vocabulary),
                    "kept": wrong,
                    "reason": "" if wrong else "rejected answer is correct",
                    "iig_sum": float(iig.sum[i]),
                    "iig_mean": float(iig.mean[i]),
                    "attack_steps": int(steps_used[i]),
                    "logp_before": float(before[i]),
                    "logp_after": float(after[i]),
                    "linf": float(((perturbed[i] - raw[i]) * 255).round().abs().max()),  # whole 8-bit steps
                    "method": cfg.method,
                }
            )
        return rows


def _choices(rec: dict) -> dict:
    """The verifier's `choices` argument for a multiple-choice record that carries its options."""
    return {"choices": rec["choices"]} if rec.get("choices") else {}


def _rate(rows: list[dict], key: str) -> float | None:
    return sum(bool(r[key]) for r in rows) / len(rows) if rows else None


def _shard_name(start: int, end: int) -> str:
    return f"{start:08d}-{end:08d}.parquet"


def apply_iig_filter(rows: list[dict], cfg: MineConfig) -> list[dict]:
    """Keep high-IIG, low-IIG or all pairs (by threshold if given, else by fraction)."""
    if cfg.iig_filter == "none" or not rows:
        return rows
    high = cfg.iig_filter == "high"
    if cfg.iig_threshold is not None:
        return [r for r in rows if (r["iig_mean"] >= cfg.iig_threshold) == high]
    ranked = sorted(rows, key=lambda r: (r["iig_mean"], r["source_index"]), reverse=high)
    keep = {r["source_index"] for r in ranked[: max(1, round(cfg.iig_fraction * len(rows)))]}
    return [r for r in rows if r["source_index"] in keep]


def run(cfg: MineConfig, on_chunk: Callable[[int], None] | None = None, progress: bool = True) -> Path:
    """Mine `cfg.n` records into `cfg.out` (resuming if shards exist) and write the final dataset."""
    from datasets import Dataset

    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    check(cfg)
    out = Path(cfg.out)
    settings = out / "config.json"
    mine_settings = settings_json(cfg)
    if cfg.overwrite and out.exists():
        import shutil

        for name in ("shards", "dataset", "config.json", "summary.json", "skipped.jsonl"):
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

    source = _source(cfg)
    if getattr(source, "n", 0) is None:  # read no more than will be mined (a copy: the caller's source is unchanged)
        source = copy.copy(source)
        source.n = cfg.n
    records, skipped = source.load()
    read = len(records) + len(skipped)
    usable, records = len(records), records[: cfg.n]
    (out / "skipped.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
    report_skipped(skipped, source, cfg.bad_records)
    if not records:
        raise SourceError(f"{source}: no usable records to mine")
    policy = load_policy(
        ModelConfig(
            cfg.model, precision=cfg.precision, quantization=cfg.quantization, lora=None, adapter_path=cfg.adapter
        )
    )
    miner = Miner(policy.model, policy.processor, cfg, source.vocabulary)
    done = {p.name for p in (out / "shards").glob("*.parquet")}
    chunks = [(s, min(s + cfg.batch_size, len(records))) for s in range(0, len(records), cfg.batch_size)]
    todo = [(s, e) for s, e in chunks if _shard_name(s, e) not in done]
    started = time.time()
    for s, e in tqdm(
        todo,
        desc=f"mining ({cfg.method})",
        unit="chunk",
        disable=not progress,
        initial=len(chunks) - len(todo),
        total=len(chunks),
    ):
        rows = miner.mine(records[s:e], s)
        for r, rec in zip(rows, records[s:e]):
            r["source_index"] = rec.get("source_index", r["source_index"])
        tmp = out / "shards" / (_shard_name(s, e) + ".tmp")
        Dataset.from_list(rows).to_parquet(str(tmp))
        os.replace(tmp, out / "shards" / _shard_name(s, e))  # atomic: a shard is whole or absent
        if on_chunk:
            on_chunk(s)
    seconds = time.time() - started

    from datasets import load_dataset

    shards = sorted(str(p) for p in (out / "shards").glob("*.parquet"))
    allrows = load_dataset("parquet", data_files=shards, split="train") if shards else Dataset.from_list([])
    # Statistics and filtering read the scalar columns only; images are decoded once, when saved.
    stats = allrows.remove_columns([c for c in ("images", "perturbed_image") if c in allrows.column_names])
    candidates = [dict(r) for r in stats]
    kept = [r for r in candidates if r["kept"]]
    keep_ids = {r["source_index"] for r in apply_iig_filter(kept, cfg)}
    # Only pairs whose rejected answer the verifier refuses: with none, the dataset is empty (and said so).
    dataset = allrows.filter(lambda k, i: bool(k) and i in keep_ids, input_columns=["kept", "source_index"])
    dataset.save_to_disk(str(out / "dataset.tmp"))
    if (out / "dataset").exists():
        import shutil

        shutil.rmtree(out / "dataset")
    os.replace(out / "dataset.tmp", out / "dataset")
    # Counter-prior records: the prior's answer is known and wrong (e.g. a red star when stars are usually blue).
    counter = [
        r
        for r in candidates
        if r["prior_answer"] and not is_correct(r["prior_answer"], r["answer"], r["answer_type"], miner.vocabulary)
    ]
    summary = {
        "method": cfg.method,
        "epsilon": cfg.epsilon,
        "source_records_read": read,
        "skipped": len(skipped),
        "usable_records": usable,
        "mined_records": len(records),
        "candidates": len(candidates),
        "rejected_wrong": len(kept),
        "pairs": len(dataset),
        "seconds_this_run": seconds,
        "images_per_second": (sum(e - s for s, e in todo) / seconds) if todo else None,
        "mean_logp_drop": sum(r["logp_before"] - r["logp_after"] for r in candidates) / max(1, len(candidates)),
        "max_linf": max((r["linf"] for r in candidates), default=0.0),
    }
    if any(r["prior_answer"] for r in candidates):  # only for sources that know the prior's answer
        # On counter-prior questions: how often the answer from the perturbed image is the prior's answer (the
        # kind's typical colour), over all such records and over those answered correctly on the clean image.
        summary |= {
            "prior_rate_counter_prior": _rate(counter, "rejected_is_prior"),
            "prior_rate_counter_prior_clean_correct": _rate(
                [r for r in counter if r["clean_correct"]], "rejected_is_prior"
            ),
            "counter_prior_records": len(counter),
            "counter_prior_clean_correct": sum(r["clean_correct"] for r in counter),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if len(dataset) == 0:
        warnings.warn(
            f"mining kept no pair in {out / 'dataset'}: the verifier accepted every one of the "
            f"{len(candidates)} rejected answers (rejected_wrong: {len(kept)}); a larger --epsilon or more --steps "
            f"perturb harder, or the model already fails these questions on clean images",
            stacklevel=2,
        )
    return out / "dataset"


def check(cfg: MineConfig) -> None:
    """Refuse out-of-range settings before any data or model is loaded, naming the option."""
    problems = []
    if cfg.method not in METHODS:
        problems.append(f"--method {cfg.method!r} is not one of {list(METHODS)}")
    if cfg.method in ("pgd", "uniform", "gaussian") and cfg.epsilon <= 0:
        problems.append(f"--epsilon {cfg.epsilon} must be > 0 (in /255 units)")
    if cfg.method == "pgd" and (cfg.step_size <= 0 or cfg.steps < 0):
        problems.append(f"--step_size {cfg.step_size} must be > 0 and --steps {cfg.steps} >= 0")
    if cfg.n < 1 or cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        problems.append(
            f"--n {cfg.n}, --batch_size {cfg.batch_size}, --max_new_tokens {cfg.max_new_tokens} must be >= 1"
        )
    if not 0 < cfg.iig_fraction <= 1:
        problems.append(f"--iig_fraction {cfg.iig_fraction} must be in (0, 1]")
    if cfg.bad_records not in ("skip", "error"):
        problems.append(f"--bad_records {cfg.bad_records!r} is not 'skip' or 'error'")
    if problems:
        raise SettingsError("; ".join(problems))


def _source(cfg: MineConfig) -> RecordSource:
    """The configured source; `answer_type` applies to a source given as a path or hub id."""
    if cfg.answer_type is None:
        return as_source(cfg.source)
    if not isinstance(cfg.source, str):
        raise SourceError(
            f"answer_type={cfg.answer_type!r} applies to a source given as a path; "
            f"set the source's own option instead (--source.answer_type {cfg.answer_type})"
        )
    if cfg.answer_type not in CLOSED_TYPES:
        raise SourceError(f"answer_type={cfg.answer_type!r} is not one of {list(CLOSED_TYPES)}")
    return Records(cfg.source, answer_type=cfg.answer_type)


def main(argv: list[str] | None = None) -> None:
    from mbpo_lit.cli import parse_dataclass, user_errors

    cfg = parse_dataclass(MineConfig, "Mine adversarial hard-negative preference pairs (MBPO's offline data).", argv)
    with user_errors():
        path = run(cfg)
    summary = json.loads((Path(cfg.out) / "summary.json").read_text())
    print(json.dumps(summary, indent=2))
    print(f"dataset: {path}  (datasets.load_from_disk)")


if __name__ == "__main__":
    main()
