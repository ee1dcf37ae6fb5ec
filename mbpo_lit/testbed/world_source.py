"""The synthetic world as a record source (`RecordSource`), and its evaluation by split.

In a recipe:

    data:
      online:
        class_path: mbpo_lit.testbed.world_source.WorldSource
        init_args: {splits: [train], n: 2000, p_color: 0.5}

Records carry `group` "in_prior" / "counter_prior" (does the queried object wear its kind's typical colour),
so the generic metrics report the modality-imbalance gap under those names, and `prior_answer` (the typical
colour) for colour questions, so mining can report how often a rejected answer is the prior's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mbpo_lit.data.sources import RecordSource
from mbpo_lit.evaluation import evaluate_records
from mbpo_lit.testbed.questions import FAMILIES, build_records, make_record, parse_mentions
from mbpo_lit.testbed.world import WorldConfig

EVAL_SPLITS = ("eval_in_prior", "eval_counter_prior")


class WorldSource(RecordSource):
    """Records of the synthetic world.

    Args:
        splits: world splits to draw from ("train", "eval_in_prior", "eval_counter_prior"), n records each.
        n: records per split.
        families: question families, in turn ("attribute", "existence", "count", "choice", "describe").
        p_color: probability that an object wears its kind's typical colour (None: the world's own, 0.9).
            Lower values give the online stream more questions the prior gets wrong: groups whose sampled
            answers disagree, where GRPO has a signal.
        world: the world's other settings (None: `WorldConfig()`, the embedded world of 112 px scenes).
        exclude_kinds: kinds no record asks about (its `query_kind`): the held-out kinds of a generalisation
            probe, left out of every training stream. Their shapes still appear in scenes; only the questions
            about them are gone. Each split still has n records: record indices continue past the left-out ones.
        only_kinds: the kinds records ask about, the others left out (the probe's side: held-out kinds only);
            records that query no kind (counting all objects) are left out too.
    """

    def __init__(
        self,
        splits: Sequence[str] = ("train",),
        n: int = 200,
        families: Sequence[str] = ("attribute",),
        p_color: float | None = None,
        world: WorldConfig | None = None,
        exclude_kinds: Sequence[str] = (),
        only_kinds: Sequence[str] | None = None,
    ):
        self.splits, self.n, self.families = list(splits), n, list(families)
        self.world = world or WorldConfig()
        if p_color is not None:
            self.world = dataclasses.replace(self.world, p_color=p_color)
        self.vocabulary = self.world.colors
        self.exclude_kinds, self.only_kinds = list(exclude_kinds), None if only_kinds is None else list(only_kinds)
        for option, kinds in (("exclude_kinds", self.exclude_kinds), ("only_kinds", self.only_kinds or [])):
            if unknown := [k for k in kinds if k not in self.world.kinds]:
                raise ValueError(f"WorldSource {option}: unknown kinds {unknown}; the world's are {self.world.kinds}")
        if set(self.exclude_kinds) >= set(self.world.kinds) or self.only_kinds == []:
            raise ValueError(
                f"WorldSource: exclude_kinds={self.exclude_kinds}, only_kinds={self.only_kinds} leave no kind"
            )

    def __str__(self) -> str:
        return f"world[{','.join(self.splits)}]"

    def load(self) -> tuple[list[dict], list[dict]]:
        if not self.exclude_kinds and self.only_kinds is None:
            return [r for s in self.splits for r in build_records(self.world, s, self.n, tuple(self.families))], []
        return [r for s in self.splits for r in self._kept_records(s)], []

    def _kept_records(self, split: str) -> list[dict]:
        """The first n records of `split` that the kind filters keep (record i is record i of the unfiltered split,
        so a filtered split is a subsequence of the unfiltered one)."""
        out: list[dict] = []
        for i in range(self.n * 200):  # a bound: a filter no family can satisfy ends with an error, not a hang
            r = make_record(self.world, split, i, self.families[i % len(self.families)])
            kind = r["query_kind"]
            if kind not in self.exclude_kinds and (self.only_kinds is None or kind in self.only_kinds):
                out.append(r)
                if len(out) == self.n:
                    return out
        raise ValueError(f"WorldSource: the families {self.families} hold too few questions on the kinds kept")

    def mentions(self, text: str) -> list[str]:
        return [f"{c} {k}" if c else k for k, c in parse_mentions(text, self.world)]


def evaluate_world(
    model,
    processor,
    world: WorldConfig,
    n: int = 200,
    families: Sequence[str] = FAMILIES,
    batch_size: int = 32,
    progress: bool = True,
    with_iig: bool = True,
) -> dict:
    """Evaluate on both eval splits of the world (n records each) and summarise the imbalance gap."""
    from mbpo_lit.vlm.iig import image_information_gain

    results: dict = {}
    for split in EVAL_SPLITS:
        source = WorldSource([split], n, families, world=world)
        records, _ = source.load()
        results[split], _ = evaluate_records(
            model, processor, records, source.vocabulary, source.mentions, batch_size, desc=split, progress=progress
        )
        if with_iig:
            closed = [r for r in records if r["answer_type"] != "description"]
            gain = image_information_gain(
                model,
                processor,
                [r["question"] for r in closed],
                [r["answer"] for r in closed],
                [r["image"] for r in closed],
                batch_size=batch_size,
            )
            results[split]["iig"] = {"sum": gain.sum.mean().item(), "mean": gain.mean.mean().item()}
    results["summary"] = summarize_world(results)
    return results


def summarize_world(results: dict) -> dict:
    """The headline numbers: attribute accuracy in-prior vs counter-prior, their gap, POPE, multiple choice and
    CHAIR on the counter-prior split."""

    def get(split, *keys):
        node = results.get(split, {})
        for k in keys:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        return node if not isinstance(node, dict) else None

    out = {
        "in_prior_accuracy": get("eval_in_prior", "by_family", "attribute", "accuracy"),
        "counter_prior_accuracy": get("eval_counter_prior", "by_family", "attribute", "accuracy"),
        "pope_f1": get("eval_counter_prior", "pope", "f1"),
        "pope_yes_ratio": get("eval_counter_prior", "pope", "yes_ratio"),
        "choice_accuracy": get("eval_counter_prior", "by_family", "choice", "accuracy"),
        "chair_s": get("eval_counter_prior", "chair", "chair_s"),
        "chair_i": get("eval_counter_prior", "chair", "chair_i"),
    }
    if out["in_prior_accuracy"] is not None and out["counter_prior_accuracy"] is not None:
        out["gap"] = out["in_prior_accuracy"] - out["counter_prior_accuracy"]
    return out
