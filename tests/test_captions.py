"""Sorting caption mentions that an adapter made (or stopped being) hallucinated, on the world's descriptions."""

import json
from collections import Counter

import pytest

from mbpo_lit.experiments.captions import CaptionsConfig, captions, hallucinated, mention_changes
from mbpo_lit.testbed.questions import parse_mentions
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.testbed.world_source import WorldSource

WORLD = WorldConfig(image_size=56)  # typical colours: circle red, square green, ..., star red (kinds[6] -> colors[0])


def test_hallucinated_mentions_follow_chair_rules():
    objects = ["red circle", "blue square"]
    said = parse_mentions("a red circle, a square, a green square and a star", WORLD)
    assert hallucinated(said, objects) == [("square", "green"), ("star", None)]


def test_new_and_gone_mentions_are_sorted_by_where_and_prior():
    rec = {"objects": ["red circle", "blue square"], "answer_type": "description"}
    before = "a red circle and a yellow star"  # star absent, yellow is atypical for a star
    after = "a blue circle and a red star and a blue square"  # circle there in red; star absent, red is typical
    changes = mention_changes([rec], [before], [after], WORLD)
    assert changes["new"] == Counter({("wrong colour", "atypical"): 1, ("kind absent", "typical"): 1})
    assert changes["gone"] == Counter({("kind absent", "atypical"): 1})
    same = mention_changes([rec], [after], [after], WORLD)
    assert not same["new"] and not same["gone"]


def test_the_command_reads_an_evaluate_compare_output(tmp_path, capsys):
    records = WorldSource(("eval_in_prior",), 3, ("describe",), world=WORLD).load()[0]
    before = [r["answer"] for r in records]  # the ground-truth descriptions: no hallucination
    after = [r["answer"] + " and a purple star" for r in records]
    path = tmp_path / "compare.json"
    answers = [{"id": r["id"], "prediction": p} for r, p in zip(records, after)]
    plain = [{"id": r["id"], "prediction": p} for r, p in zip(records, before)]
    path.write_text(json.dumps({"answers": answers, "without_adapter": {"answers": plain}}))
    changes = captions(CaptionsConfig(str(path), n=3, splits=("eval_in_prior",), world=WORLD))
    absent = sum("star" not in " ".join(r["objects"]) for r in records)
    assert changes["new"][("kind absent", "atypical")] == absent and not changes["gone"]
    assert "3 captions" in capsys.readouterr().out
    path.write_text(json.dumps({"answers": answers}))
    with pytest.raises(ValueError, match="not an `evaluate --compare true` output"):
        captions(CaptionsConfig(str(path), n=3, splits=("eval_in_prior",), world=WORLD))
