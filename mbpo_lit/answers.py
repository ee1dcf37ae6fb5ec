"""Answer extraction and verification for close-ended questions.

One verifier serves the evaluator, the rewards and the negative filter of mining, so "correct" means the
same thing everywhere. Answer types follow the record schema: "color" (or any short phrase), "yes_no",
"number", "choice" (a letter A-D); "description" is open-ended and scored by CHAIR instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mbpo_lit.world import parse_choice, parse_count, parse_yes_no

CLOSED_TYPES = ("color", "phrase", "yes_no", "number", "choice")
_ARTICLES = {"a", "an", "the"}


def normalize_phrase(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed: "The Red ball." -> "red ball"."""
    words = re.findall(r"[a-z0-9]+", str(text).lower())
    return " ".join(w for w in words if w not in _ARTICLES)


def extract(text: str, answer_type: str, vocabulary: Sequence[str] | None = None) -> str | None:
    """The answer a free-form completion gives, normalized for comparison, or None if it gives none.

    For "color"/"phrase" with a `vocabulary` (e.g. the world's colours), the first vocabulary word found;
    without one, the whole normalized phrase.
    """
    if answer_type == "yes_no":
        return parse_yes_no(text)
    if answer_type == "number":
        n = parse_count(text)
        return None if n is None else str(n)
    if answer_type == "choice":
        return parse_choice(text)
    if answer_type in ("color", "phrase"):
        if vocabulary:
            words = normalize_phrase(text).split()
            return next((w for w in words if w in vocabulary), None)
        return normalize_phrase(text) or None
    raise ValueError(f"answer_type {answer_type!r} is not close-ended; close-ended types: {CLOSED_TYPES}")


def is_correct(text: str, answer: str, answer_type: str, vocabulary: Sequence[str] | None = None) -> bool:
    """Whether a completion gives the reference answer (an unparseable completion is wrong)."""
    got = extract(text, answer_type, vocabulary)
    if got is None:
        return False
    if answer_type == "number":
        return got == str(parse_count(answer))
    if answer_type == "choice":
        return got == str(answer).strip().upper()
    if answer_type == "yes_no":
        return got == parse_yes_no(answer)
    return got == normalize_phrase(answer)
