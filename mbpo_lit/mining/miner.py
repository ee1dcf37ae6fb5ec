"""The miner: one chunk of records in, one candidate pair per record out (kept or not, with the reason).

For each (image, question, ground-truth answer): perturb the image (PGD that minimises the ground-truth
log-likelihood, or a noise baseline at the same budget), let the model answer from the perturbed image, and
keep the pair (chosen = ground truth, rejected = that answer) when the answer is wrong under the same verifier
the rewards use. The Image Information Gain of the chosen answer on the clean image is recorded for the filter
(`apply_iig_filter`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypedDict

import torch

from mbpo_lit.core.answers import CLOSED_TYPES, is_correct, normalize_phrase
from mbpo_lit.core.attack import pgd, random_perturbation, to_uint8_grid
from mbpo_lit.data.sources import Record
from mbpo_lit.mining.config import MineConfig
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts, user_message
from mbpo_lit.vlm.codec import PixelCodec, to_pil
from mbpo_lit.vlm.iig import image_information_gain
from mbpo_lit.vlm.logprobs import completion_scores
from mbpo_lit.vlm.sampling import SamplingRule, answer_texts

Message = list[dict[str, Any]]


class MinedRow(TypedDict):
    """One candidate pair as a shard stores it; `dataset/` holds the kept ones (TRL's DPO columns first)."""

    id: str  # the source record's id
    source_index: int  # the record's position in the source (skipped records counted), the resume key
    prompt: Message  # the user turn: the image placeholder and the question
    chosen: Message  # the assistant turn with the ground-truth answer
    rejected: Message  # the assistant turn with the model's answer on the perturbed image
    images: list  # [the clean image] (PIL)
    perturbed_image: Any  # the perturbed image (PIL, 8-bit): it reproduces `rejected` and `logp_after`
    question: str
    answer: str  # the ground truth
    answer_type: str  # picks the verifier
    choices: str  # a multiple-choice record's option texts as JSON ("[]" for none: one column type)
    group: str  # the source's group ("" if none), e.g. the world's in-prior / counter-prior
    prior_answer: str  # the language prior's answer, where the source knows it ("" if not)
    clean_answer: str  # the model's greedy answer on the clean image
    clean_correct: bool  # whether the verifier accepts it
    rejected_is_prior: bool  # whether the rejected answer is the prior's answer (sources that know it)
    kept: bool  # whether the rejected answer is wrong (a usable pair)
    reason: str  # why not kept ("" if kept)
    iig_sum: float  # Image Information Gain of the chosen answer, summed over its tokens
    iig_mean: float  # ... and per token (what the filter ranks by)
    attack_steps: int  # PGD steps this sample ran (0 for baselines)
    logp_before: float  # ground truth's log-likelihood on the clean image
    logp_after: float  # ... on the perturbed one
    linf: float  # the perturbation's largest pixel change, in whole 8-bit steps
    method: str  # "pgd" or the baseline


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
        (`sampling.answer_texts`). A mined answer is the model's own distribution on every checkpoint.
        """
        pixel_values, _ = self.codec.encode(images)
        batch = dict(prompts.to(self.device), pixel_values=pixel_values.to(prompts["pixel_values"].dtype))
        rule = SamplingRule.of(self.model, self.processor, temperature=1.0 if sample else 0.0)
        return answer_texts(self.model, self.processor, batch, self.cfg.max_new_tokens, rule)

    def is_wrong(self, rec: Record, text: str) -> bool:
        """Whether a rejected answer is wrong: the verifier for close-ended types, else a different phrase.

        An answer that is the ground truth's own text is never wrong, even where the verifier cannot parse
        either (a pair whose rejected answer equals its chosen one would push the right answer down)."""
        if text.strip().lower() == str(rec["answer"]).strip().lower():
            return False
        if rec["answer_type"] in CLOSED_TYPES:
            return not is_correct(text, rec["answer"], rec["answer_type"], self.vocabulary, **_choices(rec))
        return normalize_phrase(text) != normalize_phrase(rec["answer"])

    def objective(
        self, prompts, answers_ids, records: list[Record] | None = None, raw: torch.Tensor | None = None
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

    def mine(self, records: list[Record], start: int) -> list[MinedRow]:
        """Candidate pairs (kept or not, with the reason) for one chunk of records, in their order.

        PGD perturbs a batch of images of one size, so a chunk of mixed sizes (real photographs under Qwen's
        processor, which keeps each image's resolution) is mined one size at a time; a chunk of one size (the
        synthetic world) is one batch.
        """
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, rec in enumerate(records):
            by_size.setdefault(tuple(rec["image"].size), []).append(i)
        if len(by_size) == 1:
            return self.mine_batch(records, start)
        rows: list[MinedRow | None] = [None] * len(records)
        for indices in by_size.values():
            # Each size group is seeded by its first record's position, so the result does not depend on the
            # other records of the chunk.
            for i, row in zip(indices, self.mine_batch([records[i] for i in indices], start + indices[0])):
                rows[i] = row | {"source_index": start + i}
        return rows

    def perturb(self, prompts, answer_ids, records: list[Record], raw: torch.Tensor, gen: torch.Generator):
        """(perturbed images rounded to 8 bits, PGD steps per sample) by the configured method."""
        cfg, eps, step = self.cfg, self.cfg.epsilon / 255, self.cfg.step_size / 255
        if cfg.method == "pgd":
            objective = self.objective(prompts, answer_ids, records, raw)
            res = pgd(objective, raw, eps, step, cfg.steps, cfg.random_start, cfg.norm, cfg.early_stop, gen)
            perturbed, steps_used = res.images, res.steps_used
        else:
            perturbed = random_perturbation(cfg.method, raw, eps, cfg.diffusion_t, gen)
            steps_used = torch.zeros(len(records), dtype=torch.long)
        # The diffusion baseline is not bounded by epsilon: round it without projecting.
        bound = eps if cfg.method != "diffusion" else 1.0
        return to_uint8_grid(perturbed, raw, bound, cfg.norm if cfg.method == "pgd" else "linf"), steps_used

    def mine_batch(self, records: list[Record], start: int) -> list[MinedRow]:
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
        raw = torch.stack(self.codec.raw_images(prompts)).to(self.device)
        raw = to_uint8_grid(raw, raw, 0.0)
        answer_ids = answer_token_ids(self.processor, answers)
        loglik = self.loglik(prompts, answer_ids)
        with torch.no_grad():  # the ground truth's log-likelihood on the clean image
            before = loglik(raw).cpu()
        clean = self.answer(prompts, raw)
        perturbed, steps_used = self.perturb(prompts, answer_ids, records, raw, gen)
        with torch.no_grad():
            after = loglik(perturbed).cpu()
        rejected = self.answer(prompts, perturbed, sample=cfg.decode == "sample")
        iig = image_information_gain(
            self.model, self.processor, qs, answers, images, cfg.iig_baseline, batch_size=cfg.batch_size
        )
        return [
            self.row(
                rec,
                start + i,
                clean=clean[i],
                rejected=rejected[i],
                perturbed=perturbed[i],
                raw=raw[i],
                iig=(float(iig.sum[i]), float(iig.mean[i])),
                steps=int(steps_used[i]),
                logp=(float(before[i]), float(after[i])),
            )
            for i, rec in enumerate(records)
        ]

    def row(self, rec: Record, source_index: int, *, clean, rejected, perturbed, raw, iig, steps, logp) -> MinedRow:
        """One record's candidate pair, with what the summary and the filter read."""
        wrong = self.is_wrong(rec, rejected)
        prior = rec.get("prior_answer") or ""  # the language prior's answer, where the source knows it
        return MinedRow(
            id=rec["id"],
            source_index=source_index,
            prompt=user_message(rec["question"]),
            chosen=[{"role": "assistant", "content": [{"type": "text", "text": rec["answer"]}]}],
            rejected=[{"role": "assistant", "content": [{"type": "text", "text": rejected}]}],
            images=[rec["image"]],
            perturbed_image=to_pil(perturbed),
            question=rec["question"],
            answer=rec["answer"],
            answer_type=rec["answer_type"],
            # The options' texts as the source gave them, so that the pair is judged, and re-mined, with them.
            choices=json.dumps(list(rec.get("choices") or [])),
            group=rec.get("group") or "",
            prior_answer=prior,
            clean_answer=clean,
            clean_correct=not self.is_wrong(rec, clean),
            rejected_is_prior=bool(prior) and is_correct(rejected, prior, rec["answer_type"], self.vocabulary),
            kept=wrong,
            reason="" if wrong else "rejected answer is correct",
            iig_sum=iig[0],
            iig_mean=iig[1],
            attack_steps=steps,
            logp_before=logp[0],
            logp_after=logp[1],
            linf=float(((perturbed - raw) * 255).round().abs().max()),  # whole 8-bit steps
            method=self.cfg.method,
        )


def _choices(rec: Record) -> dict:
    """The verifier's `choices` argument for a multiple-choice record that carries its options."""
    return {"choices": rec["choices"]} if rec.get("choices") else {}


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
