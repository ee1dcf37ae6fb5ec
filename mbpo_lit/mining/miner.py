"""The miner: one chunk of records in, one candidate pair per record out (kept or not, with the reason).

For each (image, question, ground-truth answer): perturb the image (PGD that minimises the ground-truth
log-likelihood, or a noise baseline at the same budget), let the model answer from the perturbed image, and
keep the pair (chosen = ground truth, rejected = that answer) when the answer is wrong under the same verifier
the rewards use. The Image Information Gain of the chosen and of the rejected answer on the clean image, and the
model's answers without visual evidence (`prior.image_free_answers`), are recorded for the filters
(`filters.apply_pair_filter`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypedDict

import torch

from mbpo_lit.core.answers import is_correct
from mbpo_lit.core.attack import pgd, random_perturbation, to_uint8_grid
from mbpo_lit.data.sources import Record
from mbpo_lit.mining.config import MineConfig
from mbpo_lit.mining.fast_vision import fast_vision
from mbpo_lit.mining.prior import ImageFree, accepts
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts, take_rows, user_message
from mbpo_lit.vlm.codec import PixelCodec, pad_stack, to_pil, unpad
from mbpo_lit.vlm.logprobs import CompletionScores, completion_scores
from mbpo_lit.vlm.sampling import SamplingRule, answer_texts

Message = list[dict[str, Any]]
Sizes = list[tuple[int, int]] | None  # (height, width) of each image of a padded batch; None: one size


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
    iig_rejected_sum: float  # Image Information Gain of the rejected answer, summed over its tokens
    iig_rejected_mean: float  # ... and per token ("iig_margin" ranks by iig_mean - iig_rejected_mean)
    answer_grey: str  # the model's greedy answer on a uniform grey image of the record's size
    answer_no_image: str  # ... to the question with no image
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
        self.free = ImageFree(model, processor, cfg.max_new_tokens, cfg.iig_baseline)  # shared by the job's chunks

    def pixels(self, images: torch.Tensor, sizes: Sizes = None, index: torch.Tensor | None = None) -> torch.Tensor:
        """The pixel inputs of raw images (the samples at `index` of a batch whose image sizes are `sizes`)."""
        part = sizes if sizes is None or index is None else [sizes[i] for i in index.tolist()]
        return self.codec.encode(images, part)[0]

    def scorer(self, prompts, answers_ids, sizes: Sizes = None) -> Callable[..., CompletionScores]:
        """(images, index) -> for the samples at `index` (all when None): the ground-truth answer's per-token
        log-likelihood, differentiable in the images, whether every answer token (its end token included) is the
        argmax given the tokens before it, and by what margin (`completion_scores`)."""
        batch, mask = append_completions(prompts, answers_ids, self.processor.tokenizer.pad_token_id)
        batch, mask = batch.to(self.device), mask.to(self.device)

        def value(images: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            rows, part = (batch, mask) if index is None else (take_rows(batch, index), mask[index])
            inputs = dict(rows, pixel_values=self.pixels(images, sizes, index).to(batch["pixel_values"].dtype))
            return completion_scores(self.model, inputs, part, margins=True)

        return value

    def loglik(self, prompts, answers_ids, sizes: Sizes = None) -> Callable[..., torch.Tensor]:
        """(images, index) -> the ground-truth answer's log-likelihood for the samples at `index` (all when None),
        differentiable in the images."""
        score = self.scorer(prompts, answers_ids, sizes)
        return lambda images, index=None: score(images, index)[0].sum(1)

    @torch.no_grad()
    def answer(
        self,
        prompts,
        images: torch.Tensor,
        sample: bool = False,
        index: torch.Tensor | None = None,
        sizes: Sizes = None,
    ) -> list[str]:
        """The model's answers given raw images (of the prompts at `index`, or all): greedy, or sampled at
        temperature 1.

        Decoding applies none of the checkpoint's `generation_config` processors (Qwen's repetition penalty,
        say): only vision tokens are suppressed, and it stops at any of the model's end ids
        (`sampling.answer_texts`). A mined answer is the model's own distribution on every checkpoint.
        """
        rows = prompts.to(self.device) if index is None else take_rows(prompts.to(self.device), index)
        batch = dict(rows, pixel_values=self.pixels(images, sizes, index).to(prompts["pixel_values"].dtype))
        rule = SamplingRule.of(self.model, self.processor, temperature=1.0 if sample else 0.0)
        return answer_texts(self.model, self.processor, batch, self.cfg.max_new_tokens, rule)

    def is_wrong(self, rec: Record, text: str) -> bool:
        """Whether a rejected answer is wrong: the verifier for close-ended types, else a different phrase.

        An answer that is the ground truth's own text is never wrong, even where the verifier cannot parse
        either (a pair whose rejected answer equals its chosen one would push the right answer down)."""
        return not accepts(text, rec["answer"], rec["answer_type"], self.vocabulary, rec.get("choices") or None)

    def objective(
        self,
        prompts,
        answers_ids,
        records: list[Record] | None = None,
        raw: torch.Tensor | None = None,
        sizes: Sizes = None,
    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """PGD's objective: (images, index) -> (ground-truth log-likelihood, whether the model still answers
        correctly) for the samples at `index` (positions in the batch; PGD drops the finished ones).

        "Still correct" is the verifier's judgement of the greedy answer from the images rounded to 8 bits inside
        the ball around `raw` (the picture that will be saved, `read`), so an answer worded unlike the ground truth
        ("Yes." for "yes") is not mistaken for a successful attack. The differentiable pass settles what it can,
        as long as its lead is `MineConfig.judge_margin` logits or more, far beyond what rounding to 8 bits moves
        it (results/mining.md): where the ground truth leads every answer position by that much, that answer
        stands for the 8-bit one and nothing else runs; where another token leads some answer position by that
        much, a teacher-forced pass on the 8-bit image could not prove the ground truth greedy, so the answer is
        decoded with no such pass (the decoded answer decides, as always). The greedy answer of each sample's last
        judged image is kept in the function's `answers` (batch position -> text): it is the rejected answer. Where
        that image was read by a teacher-forced pass on 8 bits, the ground truth's log-likelihood there is kept in
        `logps` (batch position -> float): it is `logp_after`, with no pass again (a sample last judged otherwise
        has none). Without `records` (or with early_stop off) nothing is judged and every sample counts as not yet
        successful.
        """
        score, eps, cfg = self.scorer(prompts, answers_ids, sizes), self.cfg.epsilon / 255, self.cfg
        truths = self.processor.batch_decode(answers_ids, skip_special_tokens=True)
        fits = torch.tensor([len(ids) <= cfg.max_new_tokens for ids in answers_ids], dtype=torch.bool)
        answers: dict[int, str] = {}
        logps: dict[int, float] = {}

        def value(images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            scores = score(images, index)
            if records is None or not cfg.early_stop:
                return scores.logp.sum(1), torch.ones(len(index), dtype=torch.bool)
            lead = float("inf") if cfg.judge_margin is None else cfg.judge_margin
            sure = (scores.greedy & (scores.margin >= lead)).cpu()
            sure &= fits[index.cpu()] & self.provable()
            # another token leads some position by the margin: decode with no 8-bit teacher-forced pass
            wrong = ((scores.margin <= -lead) & (scores.margin < 0)).cpu() & self.provable()
            positions = index.tolist()  # once: `index` may live on the GPU
            texts = [truths[i] if s else "" for i, s in zip(positions, sure.tolist())]
            if not sure.all():  # the others are judged on their 8-bit images
                unsure = (~sure).nonzero().squeeze(1).to(images.device)
                base = raw[index[unsure]] if raw is not None else images[unsure].detach()
                rounded = to_uint8_grid(images[unsure].detach(), base, eps, cfg.norm)
                logp, read = self.read(score, prompts, rounded, index[unsure], answers_ids, truths, sizes, wrong[~sure])
                for j, t, v in zip(unsure.tolist(), read, logp.tolist()):
                    texts[j], logps[positions[j]] = t, v
            for i, unread in zip(positions, (sure | wrong).tolist()):  # no 8-bit reading of this image
                if unread:
                    logps.pop(i, None)
            answers.update(zip(positions, texts))
            correct = torch.tensor([not self.is_wrong(records[i], t) for i, t in zip(positions, texts)])
            return scores.logp.sum(1), correct

        value.answers, value.logps = answers, logps
        return value

    def read(
        self,
        score,
        prompts,
        images: torch.Tensor,
        index: torch.Tensor,
        answers_ids,
        truths,
        sizes: Sizes,
        not_greedy: torch.Tensor | None = None,
    ):
        """(ground-truth log-likelihood, greedy answer) of the samples at `index` given 8-bit `images`.

        One teacher-forced pass gives both the log-likelihood and, where every ground-truth token (the end token
        included) is the argmax given the ones before it, the greedy answer itself: decoding would reproduce the
        ground truth's tokens (`truths`, decoded as `answer_texts` decodes), as long as they fit in
        `max_new_tokens`. Only the other samples are decoded (`answer`). Samples flagged in `not_greedy` (the
        caller has shown the ground truth is not their greedy answer) are decoded without that pass, and their
        log-likelihood is NaN."""
        skip = torch.zeros(len(index), dtype=torch.bool) if not_greedy is None else not_greedy.cpu()
        positions = index.tolist()  # once: `index` may live on the GPU
        logp, proven = torch.full((len(index),), float("nan")), [False] * len(index)
        if not skip.all():
            scored = (~skip).nonzero().squeeze(1)
            with torch.no_grad():
                lp, greedy, _ = score(images[scored.to(images.device)], index[scored.to(index.device)])
            logp[scored] = lp.sum(1).float().cpu()
            for j, g in zip(scored.tolist(), greedy.tolist()):
                proven[j] = bool(g) and len(answers_ids[positions[j]]) <= self.cfg.max_new_tokens and self.provable()
        texts = [truths[i] if p else "" for i, p in zip(positions, proven)]
        todo = [j for j, p in enumerate(proven) if not p]
        if todo:
            picked = torch.tensor(todo, device=images.device)
            decoded = self.answer(prompts, images[picked], index=index[picked.to(index.device)], sizes=sizes)
            for j, t in zip(todo, decoded):
                texts[j] = t
        return logp, texts

    def provable(self) -> bool:
        """Whether a teacher-forced pass may stand for a greedy decode, and the differentiable pass's margin for an
        8-bit one (`read`, `objective`); False reads and decodes every answer on 8 bits, the reference the tests
        compare to."""
        return True

    def mine(self, records: list[Record], start: int) -> list[MinedRow]:
        """Candidate pairs (kept or not, with the reason) for one chunk of records, in their order, attacked as one
        batch: images of mixed sizes (real photographs under Qwen's processor, which keeps each image's
        resolution) are padded to one tensor (`codec.pad_stack`) and each is encoded at its own size, as Qwen-VL's
        vision tower takes images of several sizes in one call; LLaVA's processor resizes every image to one size.

        Every image the model answers from, and every score recorded, is the 8-bit one (`to_uint8_grid`): the
        saved `perturbed_image` reproduces the recorded rejected answer and `logp_after`.

        While the chunk is mined, the vision tower embeds patches by a matrix product and attends within its
        windows in one batched call (`fast_vision`: the same functions, cheaper on the CPU); the model is as it was
        after.
        """
        with fast_vision(self.model):
            return self._mine(records, start)

    def _mine(self, records: list[Record], start: int) -> list[MinedRow]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + start)
        torch.manual_seed(cfg.seed * 1_000_003 + start)  # sampled decoding, if chosen
        qs, answers = [r["question"] for r in records], [r["answer"] for r in records]
        images = [r["image"] for r in records]
        prompts = encode_prompts(self.processor, qs, images, record_ids=[r["id"] for r in records])
        raw, sizes = pad_stack(self.codec.raw_images(prompts))
        raw = to_uint8_grid(raw.to(self.device), raw.to(self.device), 0.0)
        answer_ids = answer_token_ids(self.processor, answers)
        score = self.scorer(prompts, answer_ids, sizes)
        truths = self.processor.batch_decode(answer_ids, skip_special_tokens=True)
        # the ground truth's log-likelihood on the clean image, and the clean greedy answer
        before, clean = self.read(score, prompts, raw, torch.arange(len(records)), answer_ids, truths, sizes)
        perturbed, steps_used, judged, measured = self.perturb(prompts, answer_ids, records, raw, gen, sizes)
        after = self.unmeasured(score, perturbed, measured)
        if cfg.decode == "greedy" and len(judged) == len(records):  # PGD judged each final image: its answer
            rejected = [judged[i] for i in range(len(records))]
        else:
            rejected = self.answer(prompts, perturbed, sample=cfg.decode == "sample", sizes=sizes)
        # The clean image PGD starts from is the processor's own (up to float rounding) unless rounding it to 8 bits
        # moved it: then `before` is the chosen answer's log-likelihood with the image, as IIG reads it.
        mine, theirs = self.pixels(raw, sizes).cpu(), prompts["pixel_values"].float()
        same = mine.shape == theirs.shape and torch.allclose(mine, theirs, rtol=0, atol=1e-4)
        gains = self.information_gains(prompts, qs, [answers, rejected], images, before if same else None)
        grey, blind = self.free.answers(qs, images)
        perturbed, raw = unpad(perturbed, sizes), unpad(raw, sizes)
        return [
            self.row(
                rec,
                start + i,
                clean=clean[i],
                rejected=rejected[i],
                perturbed=perturbed[i],
                raw=raw[i],
                iig=tuple(float(g[i]) for g in gains),
                free=(grey[i], blind[i]),
                steps=int(steps_used[i]),
                logp=(float(before[i]), float(after[i])),
            )
            for i, rec in enumerate(records)
        ]

    def unmeasured(self, score, perturbed: torch.Tensor, measured: dict[int, float]) -> torch.Tensor:
        """The ground truth's log-likelihood on each final 8-bit image: PGD's own reading where it read that image
        (`objective`'s `logps`), a teacher-forced pass for the others."""
        after = torch.tensor([measured.get(i, 0.0) for i in range(len(perturbed))])
        missing = torch.tensor([i for i in range(len(perturbed)) if i not in measured], dtype=torch.long)
        if len(missing):
            with torch.no_grad():
                after[missing] = score(perturbed[missing.to(perturbed.device)], missing)[0].sum(1).float().cpu()
        return after

    def information_gains(self, prompts, questions, answers: list[list[str]], images, chosen_logp=None):
        """(IIG sum, IIG mean) of each list of `answers` (the chosen ones, then the rejected ones) on the clean
        images, as `iig.image_information_gain` computes them: the side with the image from the processor's
        pixels (`prompts`), the chosen side given as `chosen_logp` where the caller holds it; the image-free side
        once per distinct prompt of the job (`prior.ImageFree`)."""
        texts = [a for part in answers for a in part]
        free = self.free.baseline_logp(
            questions * len(answers), texts, list(images) * len(answers), self.cfg.batch_size
        )
        out: list[torch.Tensor] = []
        for k, part in enumerate(answers):
            ids = answer_token_ids(self.processor, part)
            if k == 0 and chosen_logp is not None:
                with_image = chosen_logp.float().cpu()
            else:
                batch, mask = append_completions(prompts, ids, self.processor.tokenizer.pad_token_id)
                with torch.no_grad():
                    lp = completion_scores(self.model, batch.to(self.device), mask.to(self.device))[0]
                with_image = lp.sum(1).float().cpu()
            gain = with_image - free[k * len(questions) : (k + 1) * len(questions)]
            out += [gain, gain / torch.tensor([max(1, len(i)) for i in ids], dtype=torch.float32)]
        return out

    def perturb(self, prompts, answer_ids, records: list[Record], raw: torch.Tensor, gen, sizes: Sizes = None):
        """(perturbed images rounded to 8 bits, PGD steps per sample, the greedy answer PGD judged on each final
        image by batch position, the ground truth's log-likelihood PGD read on each final 8-bit image by batch
        position: both empty for the baselines and without early stop) by the configured method."""
        cfg, eps, step = self.cfg, self.cfg.epsilon / 255, self.cfg.step_size / 255
        if cfg.method == "pgd":
            objective = self.objective(prompts, answer_ids, records, raw, sizes)
            valid = None if sizes is None else valid_pixels(raw, sizes)
            res = pgd(objective, raw, eps, step, cfg.steps, cfg.random_start, cfg.norm, cfg.early_stop, gen, valid)
            measured = getattr(objective, "logps", {})  # a wrapped objective may not pass it on: then a pass
            perturbed, steps_used, judged = res.images, res.steps_used, objective.answers
        else:
            perturbed = random_perturbation(cfg.method, raw, eps, cfg.diffusion_t, gen)
            steps_used, judged, measured = torch.zeros(len(records), dtype=torch.long), {}, {}
        # The diffusion baseline is not bounded by epsilon: round it without projecting.
        bound = eps if cfg.method != "diffusion" else 1.0
        rounded = to_uint8_grid(perturbed, raw, bound, cfg.norm if cfg.method == "pgd" else "linf")
        return rounded, steps_used, judged, measured

    def row(
        self, rec: Record, source_index: int, *, clean, rejected, perturbed, raw, iig, free, steps, logp
    ) -> MinedRow:
        """One record's candidate pair, with what the summary and the filters read: `iig` is (sum, mean) of the
        chosen then of the rejected answer, `free` the answers on a grey image and with no image."""
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
            iig_rejected_sum=iig[2],
            iig_rejected_mean=iig[3],
            answer_grey=free[0],
            answer_no_image=free[1],
            attack_steps=steps,
            logp_before=logp[0],
            logp_after=logp[1],
            linf=float(((perturbed - raw) * 255).round().abs().max()),  # whole 8-bit steps
            method=self.cfg.method,
        )


def valid_pixels(batch: torch.Tensor, sizes: list[tuple[int, int]]) -> torch.Tensor:
    """[batch, 1, H, W]: 1 on each image's own pixels of a `pad_stack`, 0 on its padding."""
    valid = torch.zeros(len(sizes), 1, *batch.shape[2:], device=batch.device)
    for i, (h, w) in enumerate(sizes):
        valid[i, :, :h, :w] = 1
    return valid
