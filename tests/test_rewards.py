"""Rewards: verified accuracy per answer type, format, length, composition."""

import pytest

from mbpo_lit.core.rewards import AccuracyReward, FormatReward, LengthPenalty, Reward, compose, keyed, with_vocabulary

RECORDS = [
    {"answer": "red", "answer_type": "color"},
    {"answer": "no", "answer_type": "yes_no"},
    {"answer": "3", "answer_type": "number"},
    {"answer": "B", "answer_type": "choice"},
]
COLORS = ["red", "green", "blue"]
P = ["What colour is the ball?", "Is there a cat?", "How many apples?", "Which one?"]  # the prompts


def test_accuracy_per_type():
    assert AccuracyReward(COLORS)(P, ["red", "No.", "three", "(B)"], RECORDS) == [1.0, 1.0, 1.0, 1.0]
    assert AccuracyReward(COLORS)(P, ["blue", "yes", "4", "C"], RECORDS) == [0.0, 0.0, 0.0, 0.0]
    assert AccuracyReward(COLORS)(P, ["", "???", "", "A red one"], RECORDS) == [0.0] * 4


def test_format_rewards_bare_parseable_answers():
    assert FormatReward(vocabulary=COLORS)(P, ["red", "no", "3", "B"], RECORDS) == [1.0] * 4
    long = "well I think that the answer might be red"
    assert FormatReward(vocabulary=COLORS)(P, [long, "", "none", "A red circle"], RECORDS) == [0.0] * 4


def test_length_penalty():
    assert LengthPenalty(target_words=2, coef=0.5)(P, ["a", "a b", "a b c d"], RECORDS[:3]) == [0.0, 0.0, -1.0]


def test_compose_weights_and_reports_parts():
    parts = keyed([AccuracyReward(COLORS), FormatReward(vocabulary=COLORS, weight=0.5)])
    totals, values = compose(parts, P, ["red", "it is not there at all", "4", "B"], RECORDS)
    assert totals == [1.5, 1.0, 0.5, 1.5]
    assert values["accuracy"] == [1.0, 1.0, 0.0, 1.0]


class QuestionEcho(Reward):
    """A plug-in that reads the prompts and a record field: 1 when the completion repeats the question's last
    word, plus 10 when the record is marked."""

    def __call__(self, prompts, completions, records):
        return [float(p.split()[-1] in c) + 10 * r.get("marked", 0) for p, c, r in zip(prompts, completions, records)]


def test_a_plug_in_gets_prompts_and_record_fields_and_its_weight_and_key():
    records = [dict(RECORDS[0], marked=1), RECORDS[1]]
    parts = keyed([QuestionEcho(weight=0.5), QuestionEcho(weight=2.0)])
    assert list(parts) == ["question_echo", "question_echo_2"]
    totals, values = compose(parts, ["colour of the ball?", "Is there a cat?"], ["the ball?", "no"], records)
    assert values["question_echo"] == [11.0, 0.0]
    assert totals == [0.5 * 11 + 2.0 * 11, 0.0]


def test_vocabulary_fills_only_unset_vocabularies():
    assert with_vocabulary(AccuracyReward(), COLORS).vocabulary == COLORS
    assert with_vocabulary(AccuracyReward(["pink"]), COLORS).vocabulary == ["pink"]
    assert with_vocabulary(LengthPenalty(), COLORS) == LengthPenalty()


def test_compose_rejects_a_reward_of_the_wrong_length_or_type():
    class Short(Reward):
        def __call__(self, prompts, completions, records):
            return [0.0]

    class Words(Reward):
        def __call__(self, prompts, completions, records):
            return ["good"] * len(completions)

    with pytest.raises(ValueError, match="reward 'short' returned 1 values for 4 completions"):
        compose(keyed([Short()]), P, ["a"] * 4, RECORDS)
    with pytest.raises(ValueError, match="reward 'words' returned a value that is not a number"):
        compose(keyed([Words()]), P, ["a"] * 4, RECORDS)


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
    assert AccuracyReward()(P, verbose, records) == [1.0] * 4
    assert FormatReward()(P, verbose, records) == [0.0] * 4
    assert FormatReward()(P, ["Yes.", "2", "a cat", "Sofa."], records) == [1.0] * 4
    assert (
        AccuracyReward()(P, ["No, there is no cat.", "three", "a rocket", "It is not on the sofa."], records)
        == [0.0] * 4
    )
