"""Metrics and answer verification against hand-computed values."""

import pytest

from mbpo_lit.core.answers import extract, is_correct, normalize_phrase
from mbpo_lit.core.metrics import amber_discriminative, chair, pope_metrics
from mbpo_lit.testbed.world import WorldConfig


def test_pope_against_hand_computed_values():
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    preds = ["yes", "yes", "no", "yes", "no", None]  # None: unparseable, so wrong (scored as "yes" on a "no")
    m = pope_metrics(preds, labels)
    # TP=2 FN=1 FP=2 (one real, one unparseable) TN=1
    assert m["accuracy"] == pytest.approx(3 / 6)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 * (0.5 * 2 / 3) / (0.5 + 2 / 3))
    assert m["yes_ratio"] == pytest.approx(3 / 6)  # the unparseable answer is not a "yes"
    assert m["unparseable"] == 1 and m["n"] == 6


def test_unparseable_is_wrong_whatever_the_label():
    assert pope_metrics([None, None], ["yes", "no"])["accuracy"] == 0.0


def test_amber_uses_no_as_positive():
    m = amber_discriminative(["no", "no", "yes"], ["no", "yes", "yes"])
    assert m["precision"] == pytest.approx(1 / 2) and m["recall"] == pytest.approx(1.0)
    assert m["no_ratio"] == pytest.approx(2 / 3)


def test_pope_rejects_bad_labels_and_lengths():
    with pytest.raises(ValueError, match="'maybe'"):
        pope_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 predictions but 2 labels"):
        pope_metrics(["yes"], ["yes", "no"])


def test_chair_against_hand_computed_values():
    mentions = [["red circle", "blue square"], ["green star"], []]
    truths = [["red circle", "green bar"], ["green star"], ["blue ring"]]
    m = chair(mentions, truths)
    assert m["chair_i"] == pytest.approx(1 / 3)  # one of three mentions is hallucinated
    assert m["chair_s"] == pytest.approx(1 / 3)  # one of three captions has a hallucination
    assert m["recall"] == pytest.approx(2 / 4)  # two of four true objects mentioned


@pytest.mark.parametrize(
    "text, answer, answer_type, expected",
    [
        ("red", "red", "color", True),
        ("It is red.", "red", "color", True),
        ("green", "red", "color", False),
        ("", "red", "color", False),
        ("Yes, there is.", "yes", "yes_no", True),
        ("There is not.", "no", "yes_no", True),
        ("maybe", "no", "yes_no", False),
        ("three", "3", "number", True),
        ("3 objects", "3", "number", True),
        ("4", "3", "number", False),
        ("(B)", "B", "choice", True),
        ("The answer is C", "B", "choice", False),
        ("A red circle", "A", "choice", False),
    ],
)
def test_is_correct(text, answer, answer_type, expected):
    assert is_correct(text, answer, answer_type, WorldConfig(image_size=56).colors) is expected


def test_phrase_answers_without_vocabulary_are_normalized():
    assert normalize_phrase("The Red  Ball.") == "red ball"
    assert is_correct("a red ball", "Red ball", "phrase")
    assert extract("!!!", "phrase") is None


def test_description_is_not_close_ended():
    with pytest.raises(ValueError, match="'description' is not close-ended"):
        extract("a red circle", "description")


def test_chair_counts_a_mention_of_an_objects_kind_and_recalls_each_true_object_once():
    kind = lambda o: o.split()[-1]  # noqa: E731
    perfect = chair([["red circle", "blue square"]], [["red circle", "blue square"]], kind)
    assert perfect["recall"] == 1.0 and perfect["chair_i"] == 0.0 and perfect["chair_s"] == 0.0
    kinds = chair([["circle", "square", "circle"]], [["red circle", "blue square", "green star"]], kind)
    assert kinds["recall"] == pytest.approx(2 / 3) and kinds["chair_i"] == 0.0 and kinds["mentions"] == 3
    wrong_colour = chair([["blue circle"]], [["red circle"]], kind)
    assert wrong_colour["chair_i"] == 1.0 and wrong_colour["recall"] == 0.0
    assert chair([["circle"]], [["red circle"]])["chair_i"] == 1.0  # without `kind`, names must be equal
    assert chair([["dog"]], [["dog", "dog"]])["recall"] == 1.0  # duplicate truths count once
