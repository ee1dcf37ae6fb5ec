"""Rewards: verified accuracy per answer type, format, length, composition."""

import pytest

from mbpo_lit.core.rewards import AccuracyReward, FormatReward, LengthPenalty, compose

RECORDS = [
    {"answer": "red", "answer_type": "color"},
    {"answer": "no", "answer_type": "yes_no"},
    {"answer": "3", "answer_type": "number"},
    {"answer": "B", "answer_type": "choice"},
]
COLORS = ["red", "green", "blue"]


def test_accuracy_per_type():
    assert AccuracyReward(COLORS)(["red", "No.", "three", "(B)"], RECORDS) == [1.0, 1.0, 1.0, 1.0]
    assert AccuracyReward(COLORS)(["blue", "yes", "4", "C"], RECORDS) == [0.0, 0.0, 0.0, 0.0]
    assert AccuracyReward(COLORS)(["", "???", "", "A red one"], RECORDS) == [0.0] * 4


def test_format_rewards_bare_parseable_answers():
    assert FormatReward(vocabulary=COLORS)(["red", "no", "3", "B"], RECORDS) == [1.0] * 4
    long = "well I think that the answer might be red"
    assert FormatReward(vocabulary=COLORS)([long, "", "none", "A red circle"], RECORDS) == [0.0] * 4


def test_length_penalty():
    assert LengthPenalty(target_words=2, coef=0.5)(["a", "a b", "a b c d"], RECORDS[:3]) == [0.0, 0.0, -1.0]


def test_compose_weights_and_reports_parts():
    parts = {"accuracy": (AccuracyReward(COLORS), 1.0), "format": (FormatReward(vocabulary=COLORS), 0.5)}
    totals, values = compose(parts, ["red", "it is not there at all", "4", "B"], RECORDS)
    assert totals == [1.5, 1.0, 0.5, 1.5]
    assert values["accuracy"] == [1.0, 1.0, 0.0, 1.0]


def test_compose_rejects_a_reward_of_the_wrong_length():
    with pytest.raises(ValueError, match="reward 'bad' returned 1 values for 4 completions"):
        compose({"bad": (lambda c, r: [0.0], 1.0)}, ["a"] * 4, RECORDS)


def test_full_sentence_answers_earn_accuracy_but_not_the_format_reward():
    records = [
        {"answer": "yes", "answer_type": "yes_no"},
        {"answer": "2", "answer_type": "number"},
        {"answer": "C", "answer_type": "choice", "choices": ["a person", "a cup of coffee", "a cat", "a rocket"]},
        {"answer": "sofa", "answer_type": "phrase"},
    ]
    verbose = [
        "Yes, there is a cat in the image.",
        "There are 2 apples in the image.",
        "The correct answer is a cat.",
        "The cat is on the sofa.",
    ]
    assert AccuracyReward()(verbose, records) == [1.0] * 4
    assert FormatReward()(verbose, records) == [0.0] * 4
    assert FormatReward()(["Yes.", "2", "a cat", "Sofa."], records) == [1.0] * 4
    assert (
        AccuracyReward()(["No, there is no cat.", "three", "a rocket", "It is not on the sofa."], records) == [0.0] * 4
    )
