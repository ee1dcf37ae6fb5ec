"""Answer extraction and verification for close-ended questions.

One verifier serves the evaluator, the rewards and the negative filter of mining, so "correct" means the
same thing everywhere. Answer types follow the record schema: "color" (or any short phrase), "yes_no",
"number", "choice" (a letter A-D); "description" is open-ended and scored by CHAIR instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CLOSED_TYPES = ("color", "phrase", "yes_no", "number", "choice")
_ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def words(text: str) -> list[str]:
    """Lower-case words and digit runs of `text`: "Two red circles." -> ["two", "red", "circles"]."""
    return re.findall(r"[a-z]+|\d+", str(text).lower())


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


def parse_yes_no(text: str) -> str | None:
    """ "yes" or "no" from the first yes/no word ("not" counts as no, as in POPE's evaluation), or None."""
    table = {
        "yes": "yes",
        "yeah": "yes",
        "yep": "yes",
        "true": "yes",
        "no": "no",
        "not": "no",
        "nope": "no",
        "false": "no",
    }
    return next((table[w] for w in words(text) if w in table), None)


def parse_count(text: str) -> int | None:
    """The first number in `text`, as digits or a word from zero to ten ("three" -> 3), or None."""
    for w in words(text):
        if w.isdigit():
            return int(w)
        if w in NUMBER_WORDS:
            return NUMBER_WORDS.index(w)
    return None


def parse_choice(text: str) -> str | None:
    """A letter A-D from "B", "b", "(B)", "B.", "B) red", "The answer is B", "Answer: B"; else None.

    A leading capital followed by a space is *not* a choice ("A red circle" is an article).
    """
    t = str(text).strip()
    # Only capitals after "answer": "Answer: a red one" must not read as option A.
    patterns = (
        r"(?i:answer)\s*(?:(?i:is)|:)?\s*\(?([A-D])\b",
        r"\(([A-D])\)",
        r"^([A-Da-d])[.):,]?$",
        r"^([A-D])[.):,]",
    )
    for p in patterns:
        if m := re.search(p, t):
            return m.group(1).upper()
    return None
