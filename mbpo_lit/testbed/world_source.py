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
from mbpo_lit.testbed.questions import FAMILIES, build_records, parse_mentions
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
    """

    def __init__(
        self,
        splits: Sequence[str] = ("train",),
        n: int = 200,
        families: Sequence[str] = ("attribute",),
        p_color: float | None = None,
        world: WorldConfig | None = None,
    ):
        self.splits, self.n, self.families = list(splits), n, list(families)
        self.world = world or WorldConfig()
        if p_color is not None:
            self.world = dataclasses.replace(self.world, p_color=p_color)
        self.vocabulary = self.world.colors

    def __str__(self) -> str:
        return f"world[{','.join(self.splits)}]"

    def load(self) -> tuple[list[dict], list[dict]]:
        return [r for s in self.splits for r in build_records(self.world, s, self.n, tuple(self.families))], []

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
