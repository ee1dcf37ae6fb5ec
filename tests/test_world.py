"""Tests of the synthetic scene world: determinism, planted priors, pixels matching answers, parsers."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from datasets import Dataset, load_from_disk
from datasets import Image as ImageFeature

from mbpo_lit.core.answers import parse_choice, parse_count, parse_yes_no
from mbpo_lit.testbed.questions import (
    FAMILIES,
    build_dataset,
    build_records,
    parse_color,
    parse_mentions,
    world_vocabulary,
)
from mbpo_lit.testbed.world import Scene, SceneObject, WorldConfig, kind_frequencies, render, sample_scene

CFG = WorldConfig(image_size=56)
CLEAN = WorldConfig(noise=0.0)


@pytest.fixture(scope="module")
def train400() -> list[dict]:
    return build_records(CFG, "train", 400)


def _pixels(rec_or_img) -> np.ndarray:
    img = rec_or_img["image"] if isinstance(rec_or_img, dict) else rec_or_img
    return np.asarray(img.convert("RGB"), dtype=np.int64)


def _nearest_color(rgb: np.ndarray, cfg: WorldConfig) -> str:
    return min(cfg.colors, key=lambda c: float(np.sum((rgb - np.array(cfg.palette[c])) ** 2)))


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_record_and_other_seed_differs():
    a = build_records(CFG, "train", 3, families=FAMILIES[:3])
    b = build_records(CFG, "train", 3, families=FAMILIES[:3])
    c = build_records(WorldConfig(seed=1), "train", 3, families=FAMILIES[:3])
    for x, y in zip(a, b):
        assert x["image"].tobytes() == y["image"].tobytes()
        assert (x["question"], x["answer"], x["objects"]) == (y["question"], y["answer"], y["objects"])
    assert [x["image"].tobytes() for x in a] != [z["image"].tobytes() for z in c]
    assert [x["objects"] for x in a] != [z["objects"] for z in c]


def test_record_does_not_depend_on_how_many_are_built():
    five = build_records(CFG, "eval_counter_prior", 5, families=("attribute", "existence"))
    ten = build_records(CFG, "eval_counter_prior", 10, families=("attribute", "existence"))
    later = build_records(CFG, "eval_counter_prior", 2, families=("attribute", "existence"), start=3)
    for x, y in zip(five, ten):
        assert x["image"].tobytes() == y["image"].tobytes() and x["question"] == y["question"]
        assert x["id"] == y["id"]
    assert [r["id"] for r in later] == [r["id"] for r in five[3:5]]
    assert [r["image"].tobytes() for r in later] == [r["image"].tobytes() for r in five[3:5]]
    assert len({r["id"] for r in ten}) == 10


def test_splits_with_same_index_differ():
    a, b = (build_records(CFG, s, 4) for s in ("train", "eval_in_prior"))
    assert [r["image"].tobytes() for r in a] != [r["image"].tobytes() for r in b]


# ----------------------------------------------------------------------------------------------- priors
def test_typical_colors_and_partners_are_derived_from_config():
    assert [CFG.typical_color(k) for k in CFG.kinds[:3]] == CFG.colors[:3]
    assert CFG.typical_color(CFG.kinds[len(CFG.colors)]) == CFG.colors[0]
    for k in CFG.kinds:
        assert CFG.partner(k) != k and CFG.partner(CFG.partner(k)) == k  # an even kind count pairs up
    odd = WorldConfig(kinds=["circle", "square", "triangle"])
    assert odd.partner("triangle") == "circle"


def test_train_follows_color_prior_at_p_color(train400):
    rate = np.mean([r["follows_prior"] for r in train400])
    assert abs(rate - CFG.p_color) < 0.04
    for r in train400:  # follows_prior must mean "answer is the kind's typical colour"
        assert r["follows_prior"] == (r["answer"] == CFG.typical_color(r["query_kind"]))


def test_eval_splits_all_or_none_follow():
    inp = build_records(CFG, "eval_in_prior", 60)
    ctr = build_records(CFG, "eval_counter_prior", 60)
    assert all(r["follows_prior"] and r["answer"] == CFG.typical_color(r["query_kind"]) for r in inp)
    assert not any(r["follows_prior"] or r["answer"] == CFG.typical_color(r["query_kind"]) for r in ctr)
    assert len({r["answer"] for r in ctr}) >= 4  # counter colours are spread, not one fixed substitute


def test_cooccurrence_and_kind_frequencies_match_sampling():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(CFG, rng) for _ in range(3000)]
    counts = Counter(k for s in scenes for k in s.kinds)
    exact = kind_frequencies(CFG)
    assert abs(sum(exact.values()) - CFG.n_objects) < 1e-9
    for k in CFG.kinds:
        assert abs(counts[k] / len(scenes) - exact[k]) < 0.03, k
    assert exact[CFG.kinds[0]] > exact[CFG.kinds[-1]] + 0.1  # the skew makes some kinds popular
    # With a range of object counts, frequencies average over the counts: they sum to the mean count.
    assert abs(sum(kind_frequencies(WorldConfig(min_objects=1, max_objects=5)).values()) - 3) < 1e-9
    # Each kind's partner is the kind seen with it most often, and p_cooc is what makes it so.
    for k in CFG.kinds:
        with_k = [s for s in scenes if k in s.kinds]
        rates = {b: np.mean([b in s.kinds for s in with_k]) for b in CFG.kinds if b != k}
        assert max(rates, key=rates.get) == CFG.partner(k), (k, rates)
    no_pairs = [sample_scene(WorldConfig(p_cooc=0.0), rng) for _ in range(3000)]
    rate = {
        name: np.mean(["square" in s.kinds for s in ss if "circle" in s.kinds])
        for name, ss in (("paired", scenes), ("unpaired", no_pairs))
    }
    assert rate["paired"] > rate["unpaired"] + 0.15


# ----------------------------------------------------------------------------------------------- pixels
def test_scene_objects_do_not_overlap_and_fit_the_image():
    rng = np.random.default_rng(1)
    cfg = WorldConfig(min_objects=1, max_objects=6)
    for _ in range(200):
        objs = sample_scene(cfg, rng).objects
        assert len({o.kind for o in objs}) == len(objs)
        for o in objs:
            assert 0 <= o.x and o.x + o.size <= cfg.image_size and 0 <= o.y and o.y + o.size <= cfg.image_size
        for i, a in enumerate(objs):
            for b in objs[i + 1 :]:
                apart = a.x + a.size <= b.x or b.x + b.size <= a.x or a.y + a.size <= b.y or b.y + b.size <= a.y
                assert apart, (a, b)


def test_clean_render_has_exact_palette_colors_in_each_object():
    rng = np.random.default_rng(2)
    for _ in range(30):
        scene = sample_scene(CLEAN, rng)
        img = render(scene, CLEAN, rng)
        assert img.size == (CLEAN.image_size,) * 2 == (112, 112) and img.mode == "RGB"  # the embedded world's size
        px = _pixels(img)
        for o in scene.objects:
            box = px[o.y : o.y + o.size, o.x : o.x + o.size].reshape(-1, 3)
            exact = Counter({c: int(np.all(box == CLEAN.palette[c], axis=1).sum()) for c in CLEAN.colors})
            assert exact.most_common(1)[0][0] == o.color, (o, exact)
            assert exact[o.color] >= 8  # a real shape, not a few edge pixels
        # Nothing drawn outside the objects' boxes: the rest is pure background.
        mask = np.ones((CLEAN.image_size,) * 2, bool)
        for o in scene.objects:
            mask[o.y : o.y + o.size, o.x : o.x + o.size] = False
        assert np.all(px[mask] == CLEAN.background)


def test_kinds_are_drawn_as_distinct_shapes():
    rng = np.random.default_rng(0)
    masks = {}
    for k in CLEAN.kinds:
        img = render(Scene([SceneObject(k, "red", 4, 20, 20, 16)]), CLEAN, rng)
        masks[k] = np.any(_pixels(img) != CLEAN.background, axis=2)
        assert masks[k].sum() >= 60, k  # a 16 px shape covers enough pixels to tell it apart
    for a, b in itertools.combinations(CLEAN.kinds, 2):
        differ = np.logical_xor(masks[a], masks[b]).sum() / np.logical_or(masks[a], masks[b]).sum()
        assert differ > 0.12, (a, b)


def test_queried_color_is_visible_where_the_object_is_with_noise():
    for split in ("eval_counter_prior", "train"):
        rng_cfg = WorldConfig(noise=0.1, clutter=3)
        for r in build_records(rng_cfg, split, 40):
            # Rebuild the scene the record used, to know where the queried object sits.
            scene = _scene_of(rng_cfg, split, r)
            o = next(o for o in scene.objects if o.kind == r["query_kind"])
            box = _pixels(r)[o.y : o.y + o.size, o.x : o.x + o.size].reshape(-1, 3)
            bright = box[np.abs(box - np.array(rng_cfg.background)).sum(1) > 150]
            assert _nearest_color(bright.mean(0), rng_cfg) == r["answer"]


def _scene_of(cfg: WorldConfig, split: str, rec: dict):
    from mbpo_lit.testbed.questions import SPLITS

    i = int(rec["id"].rsplit("-", 1)[1])
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, SPLITS.index(split), i]))
    scene = sample_scene(cfg, rng, {"train": None, "eval_in_prior": True, "eval_counter_prior": False}[split])
    assert [o.name for o in scene.objects] == rec["objects"]  # same draw as the record's
    return scene


# -------------------------------------------------------------------------------------------- families
def test_pope_existence_questions():
    recs = build_records(CFG, "train", 240, families=("existence",))
    freq = kind_frequencies(CFG)
    assert {r["pope_type"] for r in recs} == {"random", "popular", "adversarial"}
    assert 0.35 < np.mean([r["answer"] == "yes" for r in recs]) < 0.65
    for r in recs:
        present = {o.split()[1] for o in r["objects"]}
        k = r["query_kind"]
        assert r["question"] == f"Is there a {k} in the image?" and r["answer_type"] == "yes_no"
        assert (k in present) == (r["answer"] == "yes")
        prior_yes = any(CFG.partner(p) == k for p in present if p != k)
        assert r["follows_prior"] == (prior_yes == (r["answer"] == "yes"))
        if r["answer"] == "no" and r["pope_type"] == "adversarial":
            assert prior_yes and not r["follows_prior"]
        if r["answer"] == "no" and r["pope_type"] == "popular":
            absent = [a for a in CFG.kinds if a not in present]
            assert freq[k] == max(freq[a] for a in absent)


def test_choice_questions():
    for split in ("train", "eval_counter_prior"):
        for r in build_records(CFG, split, 60, families=("choice",)):
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
            true = r["choices"]["ABCD".index(r["answer"])]
            assert r["follows_prior"] == (true == CFG.typical_color(r["query_kind"]))
            assert CFG.typical_color(r["query_kind"]) in r["choices"]  # the prior is always a live option
            assert f"{true} {r['query_kind']}" in r["objects"]
            listed = " ".join(f"{L}. {c}" for L, c in zip("ABCD", r["choices"]))
            assert listed in r["question"] and r["answer_type"] == "choice"


def test_count_questions():
    cfg = WorldConfig(min_objects=1, max_objects=5)
    recs = build_records(cfg, "train", 80, families=("count",))
    assert {len(r["objects"]) for r in recs} == {1, 2, 3, 4, 5}
    for r in recs:
        if r["question"] == "How many objects are there?":
            assert r["answer"] == str(len(r["objects"]))
        else:
            color = r["question"].split()[2]
            assert r["answer"] == str(sum(o.split()[0] == color for o in r["objects"]))
            prior = sum(cfg.typical_color(o.split()[1]) == color for o in r["objects"])
            assert r["follows_prior"] == (prior == int(r["answer"]))
    assert any(r["question"] != "How many objects are there?" for r in recs)


def test_describe_round_trips_through_parse_mentions():
    for r in build_records(CFG, "eval_counter_prior", 30, families=("describe",)):
        mentions = parse_mentions(r["answer"], CFG)
        assert [f"{c} {k}" for k, c in mentions] == r["objects"]
        assert r["answer_type"] == "description" and r["question"] == "Describe the image."


def test_parse_mentions_free_form_and_hallucination():
    text = "Two Red circles, a BLUE square; and stars! Also a green, big triangle."
    assert parse_mentions(text, CFG) == [("circle", "red"), ("square", "blue"), ("star", None), ("triangle", None)]
    assert parse_mentions("Crosses and a yellow cross.", CFG) == [("cross", None), ("cross", "yellow")]
    assert parse_mentions("nothing here, circular squarely", CFG) == []
    scene_kinds = {"circle", "square"}
    hallucinated = [
        k for k, _ in parse_mentions("a red circle, a green square and a star", CFG) if k not in scene_kinds
    ]
    assert hallucinated == ["star"]


def test_families_are_cycled_and_fields_follow_schema():
    recs = build_records(CFG, "train", 10, families=FAMILIES)
    assert [r["family"] for r in recs] == list(FAMILIES) * 2
    types = {
        "attribute": "color",
        "existence": "yes_no",
        "count": "number",
        "choice": "choice",
        "describe": "description",
    }
    for r in recs:
        assert r["answer_type"] == types[r["family"]]
        assert (r["pope_type"] != "") == (r["family"] == "existence")
        assert (r["choices"] != []) == (r["family"] == "choice")
        assert (r["query_kind"] != "") == (r["family"] in ("attribute", "existence", "choice"))


# ----------------------------------------------------------------------------------------------- parsers
@pytest.mark.parametrize(
    "text,expected",
    [
        ("red", "red"),
        ("It is Red.", "red"),
        ("the circle is purple!", "purple"),
        ("reddish", None),
        ("", None),
        ("I don't know", None),
        (None, None),
        ("Blue, not green", "blue"),
    ],
)
def test_parse_color(text, expected):
    assert parse_color(text, CFG) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("yes", "yes"),
        ("Yes, there is.", "yes"),
        ("NO", "no"),
        ("There is not a circle.", "no"),
        ("nope", "no"),
        ("maybe", None),
        ("", None),
        ("yesterday nothing", None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("3", 3),
        ("There are 4 objects.", 4),
        ("three", 3),
        ("Zero.", 0),
        ("ten red ones", 10),
        ("12", 12),
        ("none", None),
        ("", None),
        ("someone", None),
    ],
)
def test_parse_count(text, expected):
    assert parse_count(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(C)", "C"),
        ("D.", "D"),
        ("A) red", "A"),
        ("The answer is B", "B"),
        ("Answer: D", "D"),
        ("I pick (A) red", "A"),
        ("A red circle", None),
        ("Answer: a red one", None),
        ("E", None),
        ("", None),
        ("none of them", None),
    ],
)
def test_parse_choice(text, expected):
    assert parse_choice(text) == expected


# -------------------------------------------------------------------------------------------- errors, io
@pytest.mark.parametrize(
    "kwargs,bad", [(dict(split="test"), "test"), (dict(split="train", families=("attribute", "caption")), "caption")]
)
def test_bad_split_or_family_is_named(kwargs, bad):
    with pytest.raises(ValueError, match=bad) as err:
        build_records(CFG, n=2, **kwargs)
    assert "allowed" in str(err.value)


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="hexagon"):
        WorldConfig(kinds=["circle", "hexagon"])
    with pytest.raises(ValueError):
        WorldConfig(n_objects=10)


def test_dataset_round_trips_through_disk(tmp_path):
    ds = build_dataset(CFG, "eval_in_prior", 6, families=("attribute", "choice", "existence"))
    assert isinstance(ds, Dataset) and isinstance(ds.features["image"], ImageFeature)
    ds.save_to_disk(str(tmp_path / "w"))
    back = load_from_disk(str(tmp_path / "w"))
    assert back.features == ds.features and len(back) == 6
    recs = build_records(CFG, "eval_in_prior", 6, families=("attribute", "choice", "existence"))
    for r, b in zip(recs, back):
        assert np.array_equal(_pixels(r), _pixels(b["image"]))  # PNG storage is lossless
        for key in ("question", "answer", "choices", "follows_prior", "objects", "id", "pope_type"):
            assert b[key] == r[key]


def test_vocabulary_covers_questions_and_answers():
    recs = build_records(CFG, "train", 25, families=FAMILIES)
    vocab_words = set(" ".join(world_vocabulary(CFG)).replace("?", " ").replace(".", " ").replace(",", " ").split())
    for r in recs:
        text = f"{r['question']} {r['answer']}".replace("?", " ").replace(".", " ").replace(",", " ")
        assert set(text.split()) <= vocab_words, set(text.split()) - vocab_words


def test_answer_words_are_single_tokens_of_a_tokenizer_trained_on_the_vocabulary():
    from mbpo_lit.testbed.tiny import QWEN_SPECIALS, train_tokenizer

    tok = train_tokenizer(QWEN_SPECIALS, 512, world_vocabulary(CFG))
    # Answers open the assistant turn without a leading space; multi-piece answers ("o", "r", "ange") let a
    # pushed-down rejected answer break the spelling of the same word elsewhere.
    assert {w: len(tok.encode(w).ids) for w in CFG.colors + CFG.kinds} == {w: 1 for w in CFG.colors + CFG.kinds}
