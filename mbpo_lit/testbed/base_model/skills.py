"""What a base model can do: the skills table a build measures at its end and stores in warmstart.json."""

from __future__ import annotations

import dataclasses

from mbpo_lit.testbed.world import WorldConfig

SKILL_FAMILIES = ("attribute", "existence", "count", "choice")


def skills(model, processor, world: WorldConfig, n: int = 200, progress: bool = True) -> dict:
    """What the model can do, n questions each: name a lone object's shape and colour (its description, on
    held-out one-object scenes of uniform colours), and per eval split attribute, existence (with its yes-ratio),
    counting and multiple choice. The build prints it as a table and stores it in warmstart.json."""
    from mbpo_lit.evaluation import evaluate_records, greedy_answers
    from mbpo_lit.testbed.questions import build_records, parse_mentions
    from mbpo_lit.testbed.world_source import EVAL_SPLITS

    lone = dataclasses.replace(world, n_objects=1, min_objects=1, max_objects=1, p_color=1 / len(world.colors))
    records = build_records(lone, "train", n, ("describe",), start=10**7)  # far past any training record
    questions, images = [r["question"] for r in records], [r["image"] for r in records]
    preds = greedy_answers(model, processor, questions, images, 32, 24, "one object", progress)
    said = [(parse_mentions(p, world) or [(None, None)])[0] for p in preds]
    truth = [r["objects"][0].split() for r in records]  # ["red", "circle"]
    out: dict = {
        "one_object_shape": sum(k == t[1] for (k, _), t in zip(said, truth)) / n,
        "one_object_color": sum(c == t[0] for (_, c), t in zip(said, truth)) / n,
    }
    for split in EVAL_SPLITS:
        records = build_records(world, split, n * len(SKILL_FAMILIES), SKILL_FAMILIES)
        metrics, _ = evaluate_records(model, processor, records, world.colors, desc=split, progress=progress)
        out[split] = {f: metrics["by_family"][f]["accuracy"] for f in SKILL_FAMILIES}
        out[split]["existence_yes_ratio"] = metrics["pope"]["yes_ratio"]
    return out


def format_skills(table: dict) -> str:
    """The skills as rows: one-object shape and colour, then each family on the two eval splits."""
    lines = [
        f"{'skill':<22}{'in-prior':>10}{'counter-prior':>15}",
        f"{'one object: shape':<22}{table['one_object_shape']:>10.3f}{'':>15}",
        f"{'one object: colour':<22}{table['one_object_color']:>10.3f}{'':>15}",
    ]
    for k in (*SKILL_FAMILIES, "existence_yes_ratio"):
        a, b = table["eval_in_prior"][k], table["eval_counter_prior"][k]
        lines.append(f"{k:<22}{a:>10.3f}{b:>15.3f}")
    return "\n".join(lines)


def summary(table: dict, n: int) -> dict:
    """The skills table with the attribute gap up front (what `main` prints)."""
    attribute = table["eval_in_prior"]["attribute"], table["eval_counter_prior"]["attribute"]
    return {
        "eval_records_per_split": n,
        "in_prior_accuracy": attribute[0],
        "counter_prior_accuracy": attribute[1],
        "gap": attribute[0] - attribute[1],
        "skills": table,
    }
