"""Answer extraction and verification for close-ended questions.

One verifier serves the evaluator, the rewards and the negative filter of mining, so "correct" means the
same thing everywhere. Answer types follow the record schema: "color" (or any short phrase), "yes_no",
"number", "choice" (a letter A-D); "description" is open-ended and scored by CHAIR instead.

Completions are read the way the benchmarks score free-form answers (Qwen2.5-VL and LLaVA-1.5 answer in full
sentences: "Yes, there is a cat in the image.", "The answer is (B).", "There are 2 apples."):

* yes_no, POPE's rule (RUCAIBox/POPE's evaluate.py, LLaVA's eval_pope.py): only the first sentence counts; a
  negation in it ("no", "not", a "n't" contraction, "cannot", "nope", "false") makes the answer "no", else a
  "yes" word ("yes", "yeah", "yep", "true") makes it "yes". POPE scores a first sentence with neither as
  "yes"; here it is unparseable, hence wrong whatever the label. MME's records are read by MME's own rule
  instead (`parse_yes_no_mme`, its eval_tool/calculation.py): the whole answer "yes" or "no", else "yes", then
  "no", searched in its first four characters ("Yes, there is no dog." is yes; "There is no dog." is neither).
* number: the first number, as digits or a word from zero to ten ("There are three cats." -> 3).
* choice: a letter A-D ("(B)", "B.", "B", "The answer is B", "Answer: B", "Option B"); failing a letter, and
  given the record's `choices` (the options' texts, A first), the one option whose text the completion
  contains by the phrase rule below ("The answer is red." -> the option "red"). Two options named (not inside
  one another: "cup of coffee" wins over "cup") is no answer. A letter wins over an option's text.
* color / phrase with a `vocabulary` (the synthetic world's colours): the first vocabulary word found.
* color / phrase without one, containment: the reference, normalized (case, punctuation, articles; number
  words as digits) appears as consecutive words in the completion, each word in the same or a simple
  plural / singular form ("ball"/"balls", "box"/"boxes", "berry"/"berries", "man"/"men"): "The ball is
  red." is right for "red". Containment is not enough when
    - the occurrence is negated: "no", "not", "never", "without", "nor", "neither", "cannot" or a "n't"
      contraction among the three words before it, in the same clause (a comma or full stop ends a clause;
      "but" ends the look-back): "It is not red." is wrong, "No, it is red." and "not blue but red" are right;
    - the record has `choices` and the completion also names another option, not negated ("red or blue");
    - it lies beyond the first `PHRASE_WINDOW` (30) words (articles not counted): a long completion is
      judged by its opening, so a description that names the reference somewhere is not an answer.
  Without choices or a vocabulary a hedge that lists several answers cannot be told from an answer; the
  format reward and the length penalty (core/rewards.py) discourage it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

CLOSED_TYPES = ("color", "phrase", "yes_no", "number", "choice")
_ARTICLES = {"a", "an", "the"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
LETTERS = "ABCD"
PHRASE_WINDOW = 30  # words of a completion searched for a phrase answer or an option's text
_YES = {"yes", "yeah", "yep", "true"}
_NO = {"no", "not", "nope", "false", "cannot"}
_NEGATIONS = {"no", "not", "never", "without", "nor", "neither", "cannot"}
_IRREGULAR = {
    "man": "men",
    "woman": "women",
    "person": "people",
    "child": "children",
    "mouse": "mice",
    "foot": "feet",
    "tooth": "teeth",
    "goose": "geese",
    "knife": "knives",
    "leaf": "leaves",
    "shelf": "shelves",
}
_IRREGULAR |= {plural: singular for singular, plural in _IRREGULAR.items()}


def words(text: str) -> list[str]:
    """Lower-case words and digit runs of `text`: "Two red circles." -> ["two", "red", "circles"]."""
    return re.findall(r"[a-z]+|\d+", str(text).lower())


def normalize_phrase(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed: "The Red ball." -> "red ball"."""
    words = re.findall(r"[a-z0-9]+", str(text).lower())
    return " ".join(w for w in words if w not in _ARTICLES)


def word_forms(word: str) -> set[str]:
    """`word` and its simple plural / singular forms: "box" -> {"box", "boxs", "boxes"}; "berries" -> {...,
    "berry"}; "men" -> {..., "man"}. Over-generated forms ("boxs") are harmless: they are only compared."""
    forms = {word, word + "s", word + "es"}
    if word.endswith("y"):
        forms.add(word[:-1] + "ies")
    if word.endswith("ies"):
        forms.add(word[:-3] + "y")
    if word.endswith("es"):
        forms.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss"):
        forms.add(word[:-1])
    if word in _IRREGULAR:
        forms.add(_IRREGULAR[word])
    return forms


def _tokens(text: str) -> list[str]:
    """Lower-case words keeping contractions whole ("isn't"), and digit runs."""
    return re.findall(r"[a-z]+(?:'[a-z]+)?|\d+", str(text).lower().replace("\u2019", "'"))


def _first_sentence(text: str) -> str:
    """The first sentence of `text` that holds a word (sentences end at . ! ? or a line break)."""
    return next((s for s in re.split(r"[.!?\n]+", str(text)) if re.search(r"\w", s)), "")


def _stream(text: str) -> list[tuple[str, int]]:
    """(word, clause number) for the words of `text`: articles dropped, number words as digits, possessive
    "'s" cut; clauses end at , . ; : ! ? or a line break."""
    out = []
    for clause, part in enumerate(re.split(r"[.,;:!?\n]+", str(text).lower().replace("\u2019", "'"))):
        for t in _tokens(part):
            if t in _ARTICLES:
                continue
            t = t.removesuffix("'s")
            out.append((str(NUMBER_WORDS.index(t)) if t in NUMBER_WORDS else t, clause))
    return out


def _negated(stream: list[tuple[str, int]], start: int) -> bool:
    """Whether a negation stands among the three words before `start`, in its clause, with no "but" between."""
    clause = stream[start][1]
    for j in range(start - 1, max(start - 4, -1), -1):
        word, c = stream[j]
        if c != clause or word == "but":
            return False
        if word in _NEGATIONS or word.endswith("n't"):
            return True
    return False


def _spans(stream: list[tuple[str, int]], phrase: str) -> list[tuple[int, int]]:
    """(start, end) of every non-negated occurrence of `phrase` in the first PHRASE_WINDOW words of `stream`."""
    target = [w for w, _ in _stream(phrase)]
    if not target:
        return []
    forms = [word_forms(w) for w in target]
    window = stream[:PHRASE_WINDOW]
    return [
        (s, s + len(target))
        for s in range(len(window) - len(target) + 1)
        if all(window[s + j][0] in forms[j] for j in range(len(target))) and not _negated(window, s)
    ]


def _inside(span: tuple[int, int], others: list[tuple[int, int]]) -> bool:
    return any(o[0] <= span[0] and span[1] <= o[1] and o != span for o in others)


def _options_named(text: str, choices: Sequence[str]) -> list[int]:
    """Indices of the options whose text `text` names (not negated, not only inside a longer named option)."""
    stream = _stream(text)
    spans = {i: _spans(stream, c) for i, c in enumerate(choices)}
    every = [s for found in spans.values() for s in found]
    return [i for i, found in spans.items() if any(not _inside(s, every) for s in found)]


def extract(
    text: str,
    answer_type: str,
    vocabulary: Sequence[str] | None = None,
    *,
    choices: Sequence[str] | None = None,
) -> str | None:
    """The answer a free-form completion gives, normalized for comparison, or None if it gives none.

    For "color"/"phrase" with a `vocabulary` (e.g. the world's colours), the first vocabulary word found;
    without one, the whole normalized phrase. For "choice", `choices` (the options' texts, A first) lets an
    option's text stand for its letter (see the module docstring).
    """
    if answer_type == "yes_no":
        return parse_yes_no(text)
    if answer_type == "number":
        n = parse_count(text)
        return None if n is None else str(n)
    if answer_type == "choice":
        letter = parse_choice(text)
        if letter is None and choices:
            named = _options_named(text, list(choices)[: len(LETTERS)])
            letter = LETTERS[named[0]] if len(named) == 1 else None
        return letter
    if answer_type in ("color", "phrase"):
        if vocabulary:
            words = normalize_phrase(text).split()
            return next((w for w in words if w in vocabulary), None)
        return normalize_phrase(text) or None
    raise ValueError(f"answer_type {answer_type!r} is not close-ended; close-ended types: {CLOSED_TYPES}")


def is_correct(
    text: str,
    answer: str,
    answer_type: str,
    vocabulary: Sequence[str] | None = None,
    *,
    choices: Sequence[str] | None = None,
) -> bool:
    """Whether a completion gives the reference answer (an unparseable completion is wrong).

    `choices`: the record's options, A first, when it has them (multiple choice: an option's text stands for
    its letter; phrase: naming another option too is wrong). The rules are in the module docstring.
    """
    got = extract(text, answer_type, vocabulary, choices=choices)
    if got is None:
        return False
    if answer_type == "number":
        return got == str(parse_count(answer))
    if answer_type == "choice":
        return got == str(answer).strip().upper()
    if answer_type == "yes_no":
        return got == parse_yes_no(answer)
    if vocabulary:
        return got == normalize_phrase(answer)
    return _contains_answer(text, str(answer), choices)


def _contains_answer(text: str, answer: str, choices: Sequence[str] | None) -> bool:
    """The phrase rule: a non-negated occurrence of `answer` early in `text`, and no other option named."""
    stream = _stream(text)
    found = _spans(stream, answer)
    if not found:
        return False
    if choices:
        own = {w for w, _ in _stream(answer)}
        for other in choices:
            if {w for w, _ in _stream(other)} == own:
                continue
            if any(not _inside(s, found) for s in _spans(stream, other)):
                return False
    return True


def parse_yes_no(text: str) -> str | None:
    """ "yes" or "no" from the first sentence, by POPE's rule: a negation ("no", "not", "n't", "cannot",
    "nope", "false") makes it "no", else a "yes" word ("yes", "yeah", "yep", "true") "yes"; else None."""
    said = _tokens(_first_sentence(text))
    if any(w in _NO or w.endswith("n't") for w in said):
        return "no"
    if any(w in _YES for w in said):
        return "yes"
    return None


def parse_yes_no_mme(text: str) -> str | None:
    """ "yes" or "no" by MME's rule (its eval_tool/calculation.py): the answer, stripped and in lower case, is
    "yes" or "no"; else its first four characters hold "yes" (then "yes") or "no" (then "no"); else None."""
    said = str(text).strip().lower()
    if said in ("yes", "no"):
        return said
    return "yes" if "yes" in said[:4] else "no" if "no" in said[:4] else None


def parse_count(text: str) -> int | None:
    """The first number in `text`, as digits or a word from zero to ten ("three" -> 3), or None."""
    for w in words(text):
        if w.isdigit():
            return int(w)
        if w in NUMBER_WORDS:
            return NUMBER_WORDS.index(w)
    return None


def parse_choice(text: str) -> str | None:
    """A letter A-D from "B", "b", "(B)", "B.", "B) red", "The answer is B", "Answer: B", "The correct option
    is (C)"; else None.

    A leading capital followed by a space is *not* a choice ("A red circle" is an article).
    """
    t = str(text).strip()
    # Only capitals after "answer": "Answer: a red one" must not read as option A.
    patterns = (
        r"(?i:answer|option|choice)\s*(?:(?i:is)\s*|:\s*)*\(?([A-D])\b",
        r"\(([A-D])\)",
        r"^([A-Da-d])[.):,]?$",
        r"^([A-D])[.):,]",
    )
    for p in patterns:
        if m := re.search(p, t):
            return m.group(1).upper()
    return None
