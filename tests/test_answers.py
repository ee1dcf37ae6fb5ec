"""The shared verifier on answers written the way Qwen2.5-VL and LLaVA-1.5 answer (full sentences, trailing
periods, "Yes, there is ...", "The answer is (B).") and on answers that must be wrong."""

import pytest

from mbpo_lit.core.answers import PHRASE_WINDOW, extract, is_correct, parse_yes_no, word_forms

AOKVQA = ["a person", "a cup of coffee", "a cat", "a rocket"]
COLORS = ["red", "blue", "green", "yellow"]


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        ("Yes, there is a cat in the image.", "yes", True),
        ("Yes.", "yes", True),
        ("yes", "yes", True),
        ("No, there is no cat in the image.", "no", True),
        ("No", "no", True),
        ("There is not a dog in the image.", "no", True),
        ("There isn't a dog in the image.", "no", True),
        ("There is no dog in the image.", "no", True),
        ("Yes. There is no other animal in the picture.", "yes", True),  # only the first sentence counts
        ("Yes, there is a dog in the image.", "no", False),
        ("No, there is no person in the image.", "yes", False),
        ("Yes, but the dog is not in the image.", "yes", False),  # POPE: a "not" in the first sentence is "no"
        ("The image shows a cat sitting on a sofa.", "yes", False),  # neither: unparseable, wrong
        ("The image shows a cat sitting on a sofa.", "no", False),
        ("", "yes", False),
    ],
)
def test_yes_no_by_popes_first_sentence_rule(text, answer, expected):
    assert is_correct(text, answer, "yes_no") is expected


def test_yes_no_reads_none_without_a_yes_or_no_word():
    assert parse_yes_no("In the image, a cat is sitting on a sofa.") is None
    assert parse_yes_no("I can\u2019t see a dog.") == "no"


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        ("There are 2 apples in the image.", "2", True),
        ("There are three cats.", "3", True),
        ("Three.", "3", True),
        ("3", "3", True),
        ("3", "three", True),
        ("There is one person in the image.", "1", True),
        ("There are four people in the image.", "3", False),
        ("Many.", "3", False),
        ("", "0", False),
    ],
)
def test_numbers_as_digits_or_words(text, answer, expected):
    assert is_correct(text, answer, "number") is expected


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        ("The answer is (B).", "B", True),
        ("B", "B", True),
        ("B.", "B", True),
        ("(C) a cat", "C", True),
        ("Answer: D", "D", True),
        ("The correct option is C.", "C", True),
        ("B. a rocket", "B", True),  # a letter wins over an option's text
        ("A cup of coffee.", "B", True),  # the option's text, "A" here an article
        ("The answer is a cat.", "C", True),
        ("It is a rocket.", "D", True),
        ("It is not a cat, it is a rocket.", "D", True),  # the negated option does not count
        ("The answer is C.", "B", False),
        ("It is a cat or a rocket.", "C", False),  # two options: no answer
        ("A dog.", "A", False),  # no option named, and "A" is an article
        ("", "A", False),
    ],
)
def test_choice_by_letter_or_by_the_options_text(text, answer, expected):
    assert is_correct(text, answer, "choice", choices=AOKVQA) is expected


def test_an_option_inside_a_longer_named_option_does_not_count():
    assert extract("It is a cup of coffee.", "choice", choices=["a cup", "a cup of coffee", "a cat", "a dog"]) == "B"
    assert extract("It is a cup.", "choice", choices=["a cup", "a cup of coffee", "a cat", "a dog"]) == "A"
    assert extract("The answer is red.", "choice", choices=COLORS) == "A"
    assert extract("The answer is red.", "choice") is None  # without the options no text is a letter


@pytest.mark.parametrize(
    "text, answer, expected",
    [
        ("The ball is red.", "red", True),
        ("Red.", "red", True),
        ("red", "Red", True),
        ("The cat is on the sofa.", "sofa", True),
        ("The cat is on the sofa.", "the sofa", True),
        ("There are two dogs on the grass.", "dog", True),  # simple plurals
        ("The man is holding a frisbee.", "frisbees", True),
        ("The boxes are on the shelves.", "box", True),
        ("The men are playing tennis.", "man", True),
        ("She is eating berries.", "berry", True),
        ("There are 2 people.", "two people", True),  # number words as digits
        ("No, it is red.", "red", True),  # the "No" is another clause
        ("It is not blue but red.", "red", True),
        ("It is not red.", "red", False),  # negated
        ("The ball isn't red, it is blue.", "red", False),
        ("There is no sofa in the room.", "sofa", False),
        ("A woman is standing.", "man", False),  # whole words only
        ("It is reddish.", "red", False),
        ("The ball is blue.", "red", False),
        ("", "red", False),
    ],
)
def test_phrases_by_normalized_containment(text, answer, expected):
    assert is_correct(text, answer, "phrase") is expected


def test_naming_another_option_too_is_wrong_when_the_record_has_choices():
    assert not is_correct("It is red or blue.", "red", "phrase", choices=COLORS)
    assert is_correct("It is red, not blue.", "red", "phrase", choices=COLORS)
    assert is_correct("It is red or blue.", "red", "phrase")  # without options a hedge cannot be told apart


def test_a_long_completion_is_judged_by_its_opening():
    filler = " ".join(["word"] * PHRASE_WINDOW)
    assert is_correct(f"red {filler}", "red", "phrase")
    assert not is_correct(f"{filler} red", "red", "phrase")


def test_a_vocabulary_keeps_the_first_vocabulary_word_rule_of_the_synthetic_world():
    assert is_correct("red and blue", "red", "color", COLORS)
    assert not is_correct("blue and red", "red", "color", COLORS)
    assert extract("It is not red, it is blue.", "color", COLORS) == "red"  # the first word, negated or not


def test_word_forms():
    assert {"dog", "dogs"} <= word_forms("dog") and "box" in word_forms("boxes") and "berry" in word_forms("berries")
    assert "people" in word_forms("person") and "man" in word_forms("men") and "glass" in word_forms("glasses")
