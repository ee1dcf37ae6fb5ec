"""What an ablation run is scored on: the world's whole eval set, and two probes its training never saw.

* The eval set: attribute questions on both eval splits (in-prior, counter-prior), POPE existence, counting and
  multiple choice on the counter-prior split (where the prior misleads), and CHAIR on captions of counter-prior
  scenes; `n` records per split and family, `captions_n` captions.
* Held-out phrasings: counter-prior colour questions asked in words the training never used
  (`HELDOUT_PHRASINGS`, in turn). A gain that is only the training template's does not carry over.
* Held-out kinds: with `holdout_kinds`, every training stream (online and mined, `WorldSource.exclude_kinds`) left
  those kinds' questions out; counter-prior attribute accuracy on them says whether what was learnt is "look at
  the image" or "these kinds wear these colours". The eval set's attribute questions then cover the other kinds.
* KL to the base model (`evaluation.drift.sequence_kl`) along the policy's greedy answers to the attribute
  questions of both splits: how far the run moved.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mbpo_lit.evaluation import evaluate_records
from mbpo_lit.evaluation.drift import sequence_kl
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.testbed.world_source import EVAL_SPLITS, WorldSource

# New wordings of "What color is the {kind}?" (the only one the base model and the fits are trained on).
HELDOUT_PHRASINGS = (
    "What is the color of the {kind}?",
    "Which color does the {kind} have?",
    "Tell me the color of the {kind}.",
)
TRAINING_QUESTION = "What color is the {kind}?"


@dataclass
class Probes:
    """What `evaluate_policy` scores (the ablation's final evaluation)."""

    n: int = 500
    """records per split and family (attribute on both splits; existence, count, choice on the counter-prior)."""
    captions_n: int = 1500
    """captions of counter-prior scenes for CHAIR."""
    holdout_kinds: tuple[str, ...] = ()
    """kinds the training left out (scored apart; the eval set's attribute questions cover the others)."""
    phrasings: tuple[str, ...] = HELDOUT_PHRASINGS
    """held-out wordings of the colour question, each with a {kind} slot, used in turn."""


def rephrase(records: Sequence[dict], phrasings: Sequence[str]) -> list[dict]:
    """Copies of attribute records whose question is asked in `phrasings[i % len]` instead of the template."""
    out = []
    for i, r in enumerate(records):
        if r["question"] != TRAINING_QUESTION.format(kind=r["query_kind"]):
            raise ValueError(f"record {r['id']}: {r['question']!r} is not the attribute template, cannot rephrase")
        out.append({**r, "question": phrasings[i % len(phrasings)].format(kind=r["query_kind"])})
    return out


def _accuracy(model, processor, records: list[dict], world: WorldConfig, family: str = "attribute"):
    """Greedy answers to `records` scored by the shared verifier: (accuracy of `family`, metrics, answers)."""
    metrics, answers = evaluate_records(model, processor, records, world.colors, progress=False)
    return metrics["by_family"][family]["accuracy"], metrics, answers


def evaluate_policy(model, processor, world: WorldConfig, probes: Probes) -> dict[str, float]:
    """Every metric of the ablation's final evaluation, by name (see the module docstring)."""
    held = list(probes.holdout_kinds)
    out: dict[str, float] = {}
    attribute = {}
    for split in EVAL_SPLITS:
        records = WorldSource([split], probes.n, ["attribute"], world=world, exclude_kinds=held).load()[0]
        name = split.removeprefix("eval_")
        out[f"{name}_accuracy"], _, answers = _accuracy(model, processor, records, world)
        attribute[split] = (records, answers)
    out["gap"] = out["in_prior_accuracy"] - out["counter_prior_accuracy"]
    counter = "eval_counter_prior"
    for family in ("existence", "count", "choice"):
        records = WorldSource([counter], probes.n, [family], world=world).load()[0]
        accuracy, metrics, _ = _accuracy(model, processor, records, world, family)
        out[f"{family}_accuracy"] = accuracy
        if family == "existence":
            out["pope_f1"], out["pope_yes_ratio"] = metrics["pope"]["f1"], metrics["pope"]["yes_ratio"]
    source = WorldSource([counter], probes.captions_n, ["describe"], world=world)
    metrics, _ = evaluate_records(model, processor, source.load()[0], world.colors, source.mentions, progress=False)
    out["chair_s"], out["chair_i"] = metrics["chair"]["chair_s"], metrics["chair"]["chair_i"]
    if probes.phrasings:
        records = rephrase(attribute[counter][0], probes.phrasings)
        out["heldout_phrasing_accuracy"] = _accuracy(model, processor, records, world)[0]
    if held:
        records = WorldSource([counter], probes.n, ["attribute"], world=world, only_kinds=held).load()[0]
        out["heldout_kinds_accuracy"] = _accuracy(model, processor, records, world)[0]
    records = [r for split in EVAL_SPLITS for r in attribute[split][0]]
    answers = [a for split in EVAL_SPLITS for a in attribute[split][1]]
    kl = sequence_kl(model, processor, [r["question"] for r in records], [r["image"] for r in records], answers)
    out["kl_to_base"] = kl.mean().item()
    return {k: float(v) for k, v in out.items()}
