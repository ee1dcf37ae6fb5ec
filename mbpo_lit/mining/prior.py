"""The model's answer without visual evidence, and whether a pair conflicts with it.

What a model answers on a uniform grey image, or to the question with no image at all, is what its language
prior says. A pair whose rejected answer is that answer, and whose chosen answer is not, pushes down what the
model says without looking: the pairs that teach it to look (`MineConfig.pair_filter` "prior_conflict"). A pair
whose chosen answer is the prior's own pushes down an atypical answer instead, and reinforces the prior.

The miner records both answers per record (`answer_grey`, `answer_no_image`); the filter compares them with the
pair's answers by the verifier's reading (`core.answers.extract`), never by raw strings, and never with a
source's own labels of the prior (`prior_answer`, reporting only).
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Sequence

import torch
from PIL import Image

from mbpo_lit.core.answers import CLOSED_TYPES, extract, is_correct, normalize_phrase
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.iig import Baseline, neutral_image
from mbpo_lit.vlm.logprobs import answer_logprobs
from mbpo_lit.vlm.sampling import SamplingRule, answer_texts

# `MineConfig.prior_from` -> the columns holding the model's answer without visual evidence.
PRIOR_COLUMNS = {
    "grey": ("answer_grey",),
    "no_image": ("answer_no_image",),
    "either": ("answer_grey", "answer_no_image"),
}


@torch.no_grad()
def image_free_answers(
    model: torch.nn.Module,
    processor,
    questions: Sequence[str],
    images: Sequence[Image.Image],
    max_new_tokens: int,
    record_ids: Sequence | None = None,
) -> tuple[list[str], list[str]]:
    """(greedy answers on a uniform grey image of each record's own size, greedy answers to the question with no
    image), each decoded as one batch as the miner decodes (`sampling.answer_texts`).

    The grey image goes through the same processor as the record's image, so the prompt holds as many image
    tokens; the text-only prompt is the same chat template without the image placeholder (`chat.encode_prompts`
    with no images)."""
    device = next(model.parameters()).device
    rule = SamplingRule.of(model, processor)
    grey = encode_prompts(processor, questions, [neutral_image(im) for im in images], record_ids).to(device)
    blind = encode_prompts(processor, questions, None).to(device)
    return (
        answer_texts(model, processor, grey, max_new_tokens, rule),
        answer_texts(model, processor, blind, max_new_tokens, rule),
    )


class ImageFree:
    """What a model says without visual evidence, computed once per distinct prompt of a mining job.

    The grey image of a record depends on its size only, and the image-free side of IIG on the question and the
    answer only (plus the size, for the "neutral" baseline), so records that share them share the answer or the
    log-likelihood: a job of a few question templates decodes each once, not once per record. Each distinct
    prompt is computed as `image_free_answers` and `iig.image_information_gain` compute it, in one batch of the
    distinct ones that a chunk adds; the values equal those of a pass per record up to float rounding (which rows
    share a batch).
    """

    def __init__(self, model: torch.nn.Module, processor, max_new_tokens: int, baseline: Baseline = "none"):
        self.model, self.processor, self.max_new_tokens, self.baseline = model, processor, max_new_tokens, baseline
        self.answers_seen: dict[Hashable, tuple[str, str]] = {}  # (question, image size) -> (grey, no image)
        self.logp_seen: dict[Hashable, float] = {}  # (question, answer[, image size]) -> log-likelihood (summed)

    def answers(self, questions: Sequence[str], images: Sequence[Image.Image]) -> tuple[list[str], list[str]]:
        """(greedy answers on a grey image of each record's size, greedy answers with no image), as
        `image_free_answers` gives them."""
        keys = [(q, im.size) for q, im in zip(questions, images)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.answers_seen))
        if todo:
            greys = [Image.new("RGB", size) for _, size in todo]  # only the size is read (`neutral_image`)
            answers = image_free_answers(self.model, self.processor, [q for q, _ in todo], greys, self.max_new_tokens)
            self.answers_seen.update(zip(todo, zip(*answers)))
        return [self.answers_seen[k][0] for k in keys], [self.answers_seen[k][1] for k in keys]

    def baseline_logp(
        self, questions: Sequence[str], answers: Sequence[str], images: Sequence[Image.Image], batch_size: int
    ) -> torch.Tensor:
        """The image-free side of IIG: each answer's log-likelihood (summed over its tokens) given the question
        alone ("none") or with a grey image of the record's size ("neutral"), in batches of `batch_size`."""
        keys = [(q, a, im.size if self.baseline == "neutral" else None) for q, a, im in zip(questions, answers, images)]
        todo = list(dict.fromkeys(k for k in keys if k not in self.logp_seen))
        for start in range(0, len(todo), batch_size):
            part = todo[start : start + batch_size]
            greys = None if self.baseline == "none" else [neutral_image(Image.new("RGB", k[2])) for k in part]
            logp, _ = answer_logprobs(self.model, self.processor, [k[0] for k in part], [k[1] for k in part], greys)
            self.logp_seen.update(zip(part, logp.sum(1).float().cpu().tolist()))
        return torch.tensor([self.logp_seen[k] for k in keys])


def same_answer(text: str, other: str, answer_type: str, vocabulary=None, choices=None) -> bool:
    """Whether two of the model's answers give the same answer as the verifier reads them (`extract`: "Red." and
    "The star is red." are one colour); one the verifier cannot read matches nothing. Open-ended types compare
    normalized phrases."""
    if answer_type not in CLOSED_TYPES:
        mine = normalize_phrase(text)
        return bool(mine) and mine == normalize_phrase(other)
    mine = extract(text, answer_type, vocabulary, choices=choices)
    return mine is not None and mine == extract(other, answer_type, vocabulary, choices=choices)


def accepts(text: str, answer: str, answer_type: str, vocabulary=None, choices=None) -> bool:
    """Whether the verifier takes `text` for the ground truth `answer` (the negation of `Miner.is_wrong`): the
    ground truth's own text always, else the verifier for close-ended types and the normalized phrase for others."""
    if text.strip().lower() == str(answer).strip().lower():
        return True
    if answer_type in CLOSED_TYPES:
        return is_correct(text, answer, answer_type, vocabulary, choices=choices)
    return normalize_phrase(text) == normalize_phrase(answer)


def rejected_text(row: dict) -> str:
    """The rejected answer's text of a mined row (its assistant turn)."""
    return row["rejected"][0]["content"][0]["text"]


def conflicts_with_prior(row: dict, prior_from: str, vocabulary=None) -> bool:
    """Whether a mined pair's rejected answer is the model's answer without visual evidence and its chosen answer
    (the ground truth) is not, with that answer read from `PRIOR_COLUMNS[prior_from]` ("either": from any)."""
    choices = json.loads(row.get("choices") or "[]") or None
    rejected, truth, kind = rejected_text(row), row["answer"], row["answer_type"]
    return any(
        same_answer(rejected, row[column], kind, vocabulary, choices)
        and not accepts(row[column], truth, kind, vocabulary, choices)
        for column in PRIOR_COLUMNS[prior_from]
    )
