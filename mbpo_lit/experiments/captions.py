"""`python -m mbpo_lit captions --compare FILE`: what changed in the world's captions between a model and its adapter.

CHAIR counts hallucinated mentions; this command says which. It reads the JSON of
`python -m mbpo_lit evaluate --compare true --out FILE` run on the world's descriptions, rebuilds those records
(the same world settings), and sorts every mention that is hallucinated with the adapter but not without it (new)
or the other way round (gone), by two questions:

- kind absent (the scene holds no such shape) or wrong colour (the shape is there, in another colour);
- typical colour (the colour the world's prior attaches to that kind) or atypical.

Why: MBPO weakens the colour prior in the colour questions it trains on. If the captions' new hallucinations are
atypical colour-kind pairs, the prior was also holding the captions' colour-kind pairs in place, and it loosened
there too; if they were typical, the prior would be getting stronger, which is the opposite failure.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mbpo_lit.core.metrics import named_objects
from mbpo_lit.testbed.questions import parse_mentions
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.testbed.world_source import WorldSource


def hallucinated(mentions: list[tuple[str, str | None]], objects: Sequence[str]) -> list[tuple[str, str | None]]:
    """The (kind, colour) mentions that name no present object, by CHAIR's own rule (`metrics.named_objects`:
    "red circle" names a red circle, a colourless "circle" any circle)."""
    return [(k, c) for k, c in mentions if not named_objects(f"{c} {k}" if c else k, objects, lambda o: o.split()[-1])]


def classify(kind: str, color: str | None, objects: Sequence[str], world: WorldConfig) -> tuple[str, str]:
    """(kind absent | wrong colour, typical | atypical | no colour) of one hallucinated mention."""
    where = "wrong colour" if any(o.split()[-1] == kind for o in objects) else "kind absent"
    prior = "no colour" if color is None else ("typical" if world.typical_color(kind) == color else "atypical")
    return where, prior


def _minus(a: list, b: list) -> list:
    """Multiset difference a - b (a mention said twice and hallucinated twice counts twice)."""
    left = Counter(a) - Counter(b)
    return list(left.elements())


def mention_changes(
    records: Sequence[dict], before: Sequence[str], after: Sequence[str], world: WorldConfig
) -> dict[str, Counter]:
    """{"new": Counter, "gone": Counter} of hallucinated mentions by `classify`, over description records."""
    out = {"new": Counter(), "gone": Counter()}
    for rec, b, a in zip(records, before, after, strict=True):
        hb = hallucinated(parse_mentions(b, world), rec["objects"])
        ha = hallucinated(parse_mentions(a, world), rec["objects"])
        for name, diff in (("new", _minus(ha, hb)), ("gone", _minus(hb, ha))):
            out[name].update(classify(k, c, rec["objects"], world) for k, c in diff)
    return out


@dataclass
class CaptionsConfig:
    """Sort the caption mentions that changed between the model without and with its adapter."""

    compare: str
    """the `--out` JSON of `python -m mbpo_lit evaluate --compare true` on the world's descriptions."""
    n: int = 1500
    """the `--data.n` that evaluation had (its records are rebuilt and matched by id; a record id the JSON lacks
    is an error)."""
    splits: tuple[str, ...] = ("eval_in_prior", "eval_counter_prior")
    """the `--data.splits` that evaluation had."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """the `--data.world` that evaluation had."""


def captions(cfg: CaptionsConfig) -> dict[str, Counter]:
    """Rebuild the evaluation's records, sort the hallucinated mentions that are new or gone with the adapter
    (`mention_changes`), print them as a table and return them."""
    compare, n, splits, world = cfg.compare, cfg.n, cfg.splits, cfg.world
    result = json.loads(Path(compare).read_text())
    if "without_adapter" not in result:
        raise ValueError(f"{compare}: not an `evaluate --compare true` output (no 'without_adapter')")
    records = {r["id"]: r for r in WorldSource(splits, n, ("describe",), world=world).load()[0]}
    after = {a["id"]: a["prediction"] for a in result["answers"]}
    before = {a["id"]: a["prediction"] for a in result["without_adapter"]["answers"]}
    if missing := sorted(set(after) - set(records)):
        raise ValueError(f"{compare}: records {missing[:3]} are not in the world rebuilt with n={n}, splits={splits}")
    ids = [i for i in after if records[i]["answer_type"] == "description"]
    changes = mention_changes([records[i] for i in ids], [before[i] for i in ids], [after[i] for i in ids], world)
    print(f"{len(ids)} captions; hallucinated mentions with the adapter and not without (new), and the reverse (gone)")
    print(f"{'':<28}{'new':>6}{'gone':>6}")
    for key in sorted(set(changes["new"]) | set(changes["gone"])):
        print(f"{' / '.join(key):<28}{changes['new'][key]:>6}{changes['gone'][key]:>6}")
    print(f"{'all':<28}{sum(changes['new'].values()):>6}{sum(changes['gone'].values()):>6}")
    return changes


def main(argv: list[str] | None = None) -> None:
    from mbpo_lit import cli

    cli.run(CaptionsConfig, captions, argv)


if __name__ == "__main__":
    main()
