"""Verified rewards for online close-ended prompts.

A reward is any callable with this signature (users add their own the same way):

    reward(completions: list[str], records: list[dict]) -> list[float]

`records` are the prompts' records (answer, answer_type, ...; see mbpo_lit.data.sources), one per
completion. `compose` adds weighted rewards and keeps each part for logging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mbpo_lit.core.answers import extract, is_correct, normalize_phrase

RewardFn = Callable[[list[str], list[dict]], list[float]]


@dataclass
class AccuracyReward:
    """1.0 if the completion gives the reference answer under the shared verifier (answers.py), else 0.0.

    `vocabulary` restricts colour/phrase answers to known words (e.g. the world's colours). A record's
    `choices` (its options' texts, when it has them) let a multiple-choice completion name its option by text.
    """

    vocabulary: Sequence[str] | None = None

    def __call__(self, completions: list[str], records: list[dict]) -> list[float]:
        return [
            float(is_correct(c, r["answer"], r["answer_type"], self.vocabulary, choices=r.get("choices") or None))
            for c, r in zip(completions, records, strict=True)
        ]


@dataclass
class FormatReward:
    """1.0 if the completion is a bare answer of the right type: parseable and at most `max_words` words.

    Close-ended questions ask for a word, a number or a letter; rewarding the bare form keeps completions
    short and verifiable, and is the "format reward" of MBPO's online stream. A full-sentence answer that the
    verifier accepts ("Yes, there is a cat in the image.") earns the accuracy reward but not this one.
    """

    max_words: int = 3
    vocabulary: Sequence[str] | None = None

    def __call__(self, completions: list[str], records: list[dict]) -> list[float]:
        out = []
        for c, r in zip(completions, records, strict=True):
            parsed = extract(c, r["answer_type"], self.vocabulary, choices=r.get("choices") or None)
            out.append(float(parsed is not None and 0 < len(normalize_phrase(c).split()) <= self.max_words))
        return out


@dataclass
class LengthPenalty:
    """-coef per word beyond `target_words` (0 within it): soft length control."""

    target_words: int = 3
    coef: float = 0.1

    def __call__(self, completions: list[str], records: list[dict]) -> list[float]:
        return [-self.coef * max(0, len(c.split()) - self.target_words) for c in completions]


def compose(
    parts: dict[str, tuple[RewardFn, float]], completions: list[str], records: list[dict]
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of named rewards; returns (totals, {name: unweighted values}) for logging."""
    values = {name: fn(completions, records) for name, (fn, _) in parts.items()}
    for name, v in values.items():
        if len(v) != len(completions):
            raise ValueError(f"reward {name!r} returned {len(v)} values for {len(completions)} completions")
    totals = [sum(parts[name][1] * values[name][i] for name in parts) for i in range(len(completions))]
    return totals, values
