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
from collections.abc import Sequence

import torch
from PIL import Image

from mbpo_lit.core.answers import CLOSED_TYPES, extract, is_correct, normalize_phrase
from mbpo_lit.vlm.chat import encode_prompts
from mbpo_lit.vlm.iig import neutral_image
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
