"""The questions asked about the world's scenes (testbed/world.py): five families, each with an exact answer,
as records in the schema the real-data loaders produce (so rewards, metrics and the attack run on both alike),
the vocabulary a tokenizer needs for them, and parsers of free-text answers.

Families: "attribute" (the colour-prior probe: the queried object's colour), "choice" (the same as A-D multiple
choice), "existence" (POPE: random, popular and adversarial negatives), "count" and "describe" (captions, for
CHAIR). Record i of a split depends only on (seed, split, i), never on how many records are built.
"""

from __future__ import annotations

import numpy as np
from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

try:
    from datasets import List
except ImportError:  # datasets < 4 (pyproject allows >= 3) spells a list feature Sequence
    from datasets import Sequence as List

from mbpo_lit.core.answers import NUMBER_WORDS, words
from mbpo_lit.testbed.world import Scene, WorldConfig, kind_frequencies, render, sample_scene

SPLITS = ("train", "eval_in_prior", "eval_counter_prior")
FAMILIES = ("attribute", "existence", "count", "choice", "describe")
POPE_TYPES = ("random", "popular", "adversarial")
LETTERS = ("A", "B", "C", "D")


def _prior_says_present(cfg: WorldConfig, scene: Scene, kind: str) -> bool:
    """What the co-occurrence prior predicts: `kind` is there iff some other present kind has it as partner."""
    return any(cfg.partner(k) == kind for k in scene.kinds if k != kind)


# Each builder turns a scene into one question with an exact answer, or None if this scene cannot pose it.
def _attribute(cfg: WorldConfig, scene: Scene, rng: np.random.Generator) -> dict | None:
    """The colour-prior probe itself: the queried object's colour, typical or not."""
    o = scene.objects[scene.query]
    return dict(
        question=f"What color is the {o.kind}?",
        answer=o.color,
        answer_type="color",
        follows_prior=o.color == cfg.typical_color(o.kind),
        query_kind=o.kind,
    )


def _choice(cfg: WorldConfig, scene: Scene, rng: np.random.Generator) -> dict | None:
    """The attribute question as A-D multiple choice: a verifiable reward for the online GRPO stream."""
    o = scene.objects[scene.query]
    options = [o.color] + ([cfg.typical_color(o.kind)] if o.color != cfg.typical_color(o.kind) else [])
    rest = [c for c in cfg.colors if c not in options]  # the typical colour stays in as a live trap
    options += [rest[i] for i in rng.permutation(len(rest))[: 4 - len(options)]]
    options = [options[i] for i in rng.permutation(4)]
    listed = " ".join(f"{letter}. {c}" for letter, c in zip(LETTERS, options))
    return dict(
        question=f"What color is the {o.kind}? Options: {listed}. Answer with the letter.",
        answer=LETTERS[options.index(o.color)],
        answer_type="choice",
        choices=options,
        follows_prior=o.color == cfg.typical_color(o.kind),
        query_kind=o.kind,
    )


def _existence(cfg: WorldConfig, scene: Scene, rng: np.random.Generator) -> dict | None:
    """POPE: yes for the queried kind, no for an absent kind chosen as the subset (pope_type) prescribes."""
    pope_type = POPE_TYPES[int(rng.integers(3))]  # the POPE subset; each subset has yes and no questions
    absent = [k for k in cfg.kinds if k not in scene.kinds]
    if rng.random() < 0.5 or not absent:
        kind, answer = scene.objects[scene.query].kind, "yes"
    elif pope_type == "random":
        kind, answer = absent[int(rng.integers(len(absent)))], "no"
    elif pope_type == "popular":
        freq = kind_frequencies(cfg)
        kind, answer = max(absent, key=lambda k: (freq[k], -cfg.kinds.index(k))), "no"
    else:
        partners = [k for k in absent if _prior_says_present(cfg, scene, k)]
        if not partners:
            return None  # this scene has no absent partner: make_record draws another scene
        kind, answer = partners[int(rng.integers(len(partners)))], "no"
    return dict(
        question=f"Is there a {kind} in the image?",
        answer=answer,
        answer_type="yes_no",
        follows_prior=_prior_says_present(cfg, scene, kind) == (answer == "yes"),
        query_kind=kind,
        pope_type=pope_type,
    )


def _count(cfg: WorldConfig, scene: Scene, rng: np.random.Generator) -> dict | None:
    """All objects, or those of the queried object's colour, where counting by kind alone can mislead."""
    if rng.random() < 0.5:
        return dict(
            question="How many objects are there?",
            answer=str(len(scene.objects)),
            answer_type="number",
            follows_prior=True,
        )
    color = scene.objects[scene.query].color
    true = sum(o.color == color for o in scene.objects)
    prior = sum(cfg.typical_color(o.kind) == color for o in scene.objects)  # counting by kind alone
    return dict(
        question=f"How many {color} objects are there?",
        answer=str(true),
        answer_type="number",
        follows_prior=true == prior,
    )


def describe_objects(names: list[str]) -> str:
    """Canonical description, e.g. "a red circle, a blue square and a green star" (parse_mentions reads it)."""
    items = [f"a {n}" for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _describe(cfg: WorldConfig, scene: Scene, rng: np.random.Generator) -> dict | None:
    """Open-ended captions for CHAIR: every object, in reading order."""
    return dict(
        question="Describe the image.",
        answer=describe_objects([o.name for o in scene.objects]),
        answer_type="description",
        follows_prior=all(o.color == cfg.typical_color(o.kind) for o in scene.objects),
    )


_BUILDERS = {
    "attribute": _attribute,
    "existence": _existence,
    "count": _count,
    "choice": _choice,
    "describe": _describe,
}
_STR = Value("string")
FEATURES = Features(
    {
        "image": ImageFeature(),
        "question": _STR,
        "answer": _STR,
        "answer_type": _STR,
        "family": _STR,
        "choices": List(_STR),
        "follows_prior": Value("bool"),
        "objects": List(_STR),
        "query_kind": _STR,
        "pope_type": _STR,
        "id": _STR,
        "group": _STR,
        "prior_answer": _STR,
    }
)


def _check(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def make_record(cfg: WorldConfig, split: str, i: int, family: str) -> dict:
    """Record i of `split`: its own seeded generator makes it independent of every other record."""
    _check("split", split, SPLITS)
    _check("family", family, FAMILIES)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS.index(split), i]))
    follow = {"train": None, "eval_in_prior": True, "eval_counter_prior": False}[split]
    for _ in range(50):
        scene = sample_scene(cfg, rng, follow)
        q = _BUILDERS[family](cfg, scene, rng)
        if q is not None:
            break
    else:
        raise ValueError(
            "this config never leaves a partner absent, so POPE adversarial negatives "
            "cannot be made; lower p_cooc or change the object count"
        )
    record = dict(
        image=render(scene, cfg, rng),
        family=family,
        choices=[],
        query_kind="",
        pope_type="",
        objects=[o.name for o in scene.objects],
        id=f"{split}-{cfg.seed}-{i}",
    )
    record.update(q)
    # The generic record fields: the metrics slice, and the answer the language prior gives (colour questions).
    record["group"] = "in_prior" if record["follows_prior"] else "counter_prior"
    record["prior_answer"] = cfg.typical_color(record["query_kind"]) if family == "attribute" else ""
    return record


def build_records(
    cfg: WorldConfig, split: str, n: int, families: tuple[str, ...] | list[str] = ("attribute",), start: int = 0
) -> list[dict]:
    """Records start..start+n-1 of `split`; record i asks a question of family families[i % len(families)]."""
    _check("split", split, SPLITS)
    if not families:
        raise ValueError(f"families is empty; allowed: {', '.join(FAMILIES)}")
    for f in families:
        _check("family", f, FAMILIES)
    return [make_record(cfg, split, i, families[i % len(families)]) for i in range(start, start + n)]


def build_dataset(
    cfg: WorldConfig, split: str, n: int, families: tuple[str, ...] | list[str] = ("attribute",), start: int = 0
) -> Dataset:
    """The same records as a `datasets.Dataset` with the explicit FEATURES (images stored as PNG)."""
    return Dataset.from_list(build_records(cfg, split, n, families, start), features=FEATURES)


def world_vocabulary(cfg: WorldConfig) -> list[str]:
    """Lines covering every template, word and answer, to train a tokenizer that encodes the world compactly."""
    kinds, colors = cfg.kinds, cfg.colors
    lines = [
        "Describe the image.",
        "How many objects are there?",
        "Answer with the letter.",
        "yes",
        "no",
        "Yes",
        "No",
        " ".join(LETTERS),
        " ".join(NUMBER_WORDS),
        " ".join(str(i) for i in range(11)),
    ]
    lines += [f"What color is the {k}?" for k in kinds] + [f"Is there a {k} in the image?" for k in kinds]
    lines += [f"How many {c} objects are there?" for c in colors]
    lines += [
        f"Options: {' '.join(f'{L}. {c}' for L, c in zip(LETTERS, colors[i:] + colors[:i]))}."
        for i in range(len(colors))
    ]
    lines += [describe_objects([f"{c} {k}" for c in colors]) for k in kinds]
    lines += [" ".join(_plural(k) for k in kinds)]
    # Answers stand alone at the start of the assistant turn (no leading space). As their own lines they
    # become single tokens, as colour words are in real vocabularies; split into pieces ("o", "r", "ange"),
    # pushing a rejected answer down also broke the spelling of the same word where it was right.
    lines += list(kinds) + list(colors)
    return lines


# ------------------------------------------------------------------------------------------------ parsers
def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def parse_mentions(text: str, cfg: WorldConfig) -> list[tuple[str, str | None]]:
    """(kind, colour or None) for every kind word in free text, singular or plural, in order of mention.

    The colour is the word directly before the kind, when that word is a colour ("two red circles" gives
    ("circle", "red")). CHAIR-style metrics compare these mentions with the scene's objects.
    """
    singular = {k: k for k in cfg.kinds} | {_plural(k): k for k in cfg.kinds}
    said = words(text)
    return [
        (singular[w], said[j - 1] if j > 0 and said[j - 1] in cfg.colors else None)
        for j, w in enumerate(said)
        if w in singular
    ]


def parse_color(text: str, cfg: WorldConfig) -> str | None:
    """The first colour word in `text` ("It is red." -> "red"), or None."""
    return next((w for w in words(text) if w in cfg.colors), None)
