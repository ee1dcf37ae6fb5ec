"""Verified rewards for online close-ended prompts, as plug-ins a recipe names by `class_path`.

A reward is a `Reward` subclass: constructed from its options (`weight` among them) and called with the step's
online prompts (the questions as the model sees them), the sampled completions and each completion's record
(answer, answer_type, choices, ... : every field of the source, see mbpo_lit.data.sources), one of each per
completion; it returns one float per completion. The online reward of a completion is the weighted sum of every
reward's value (`compose`), and each reward's unweighted values are logged under its `name`.

A recipe lists them under `model.rewards` (`functions` replaces the shipped set, `extra` adds to it):

    model:
      rewards:
        extra:
          - class_path: my_package.rewards.BrevityBonus
            init_args: {weight: 0.2}

The shipped ones (`AccuracyReward`, `FormatReward`, `LengthPenalty`) are such plug-ins. Subclasses with a
`vocabulary` field get the training run's answer vocabulary when theirs is unset (`with_vocabulary`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass

from mbpo_lit.core.answers import extract, is_correct, normalize_phrase


class Reward:
    """Base class of online rewards (see the module docstring).

    Attributes:
        weight: the reward's weight in the online reward (the sum over rewards of weight x value).
        name: its key in the logs (`online/reward_<name>`); by default the class name in snake case without a
            trailing "Reward" (`BrevityBonus` -> "brevity_bonus").
    """

    weight: float = 1.0
    name: str = ""

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} weight={self.weight}>"

    @property
    def key(self) -> str:
        """`name`, or the class name in snake case."""
        if self.name:
            return self.name
        stem = type(self).__name__.removesuffix("Reward") or type(self).__name__
        return re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower()


@dataclass
class AccuracyReward(Reward):
    """1.0 if the completion gives the reference answer under the shared verifier (answers.py), else 0.0.

    `vocabulary` restricts colour/phrase answers to known words (e.g. the world's colours). A record's
    `choices` (its options' texts, when it has them) let a multiple-choice completion name its option by text.
    """

    vocabulary: Sequence[str] | None = None
    weight: float = 1.0
    name = "accuracy"

    def __call__(self, prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
        return [
            float(is_correct(c, r["answer"], r["answer_type"], self.vocabulary, choices=r.get("choices") or None))
            for c, r in zip(completions, records, strict=True)
        ]


@dataclass
class FormatReward(Reward):
    """1.0 if the completion is a bare answer of the right type: parseable and at most `max_words` words.

    Close-ended questions ask for a word, a number or a letter; rewarding the bare form keeps completions
    short and verifiable, and is the "format reward" of MBPO's online stream. A full-sentence answer that the
    verifier accepts ("Yes, there is a cat in the image.") earns the accuracy reward but not this one.
    """

    max_words: int = 3
    vocabulary: Sequence[str] | None = None
    weight: float = 0.5
    name = "format"

    def __call__(self, prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
        out = []
        for c, r in zip(completions, records, strict=True):
            parsed = extract(c, r["answer_type"], self.vocabulary, choices=r.get("choices") or None)
            out.append(float(parsed is not None and 0 < len(normalize_phrase(c).split()) <= self.max_words))
        return out


@dataclass
class LengthPenalty(Reward):
    """-coef per word beyond `target_words` (0 within it): soft length control."""

    target_words: int = 3
    coef: float = 0.1
    weight: float = 1.0
    name = "length"

    def __call__(self, prompts: list[str], completions: list[str], records: list[dict]) -> list[float]:
        return [-self.coef * max(0, len(c.split()) - self.target_words) for c in completions]


def shipped_rewards() -> list[Reward]:
    """The online rewards of MBPO's recipes: accuracy (weight 1), format (0.5) and the length penalty (1)."""
    return [AccuracyReward(), FormatReward(), LengthPenalty()]


def with_vocabulary(reward: Reward, vocabulary: Sequence[str] | None) -> Reward:
    """A copy of `reward` with `vocabulary` when it is a dataclass with an unset `vocabulary` field, else itself."""
    fields = {f.name for f in dataclasses.fields(reward)} if dataclasses.is_dataclass(reward) else set()
    if "vocabulary" in fields and reward.vocabulary is None and vocabulary is not None:
        return dataclasses.replace(reward, vocabulary=list(vocabulary))
    return reward


def keyed(rewards: Sequence[Reward]) -> dict[str, Reward]:
    """Rewards by their log key; a key used twice gets a suffix ("accuracy", "accuracy_2")."""
    out: dict[str, Reward] = {}
    for reward in rewards:
        key, k = reward.key, 2
        while key in out:
            key, k = f"{reward.key}_{k}", k + 1
        out[key] = reward
    return out


def compose(
    rewards: dict[str, Reward], prompts: list[str], completions: list[str], records: list[dict]
) -> tuple[list[float], dict[str, list[float]]]:
    """Weighted sum of the keyed rewards; returns (totals, {key: unweighted values}) for logging. A reward that
    returns the wrong number of values, or a value that is not a finite-or-nan float, is refused by name."""
    values = {}
    for key, fn in rewards.items():
        v = fn(prompts, completions, records)
        if len(v) != len(completions):
            raise ValueError(f"reward {key!r} returned {len(v)} values for {len(completions)} completions")
        try:
            values[key] = [float(x) for x in v]
        except (TypeError, ValueError) as err:
            raise ValueError(f"reward {key!r} returned a value that is not a number: {err}") from err
    totals = [sum(rewards[k].weight * values[k][i] for k in rewards) for i in range(len(completions))]
    return totals, values
