"""The arms of the ablation grid (`python -m mbpo_lit ablate`): each variant is a name, fit overrides on top of
the embedded recipe, a mining config, and the sweeps it is a point of (what the plots draw)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Variant:
    """One arm of the ablation.

    Args:
        name: identifier (directory name, CSV value, `--variants` entry).
        description: one line for listings and plot legends.
        fit_args: extra `python -m mbpo_lit fit` options, e.g. ("--data.online", "null").
        mine: `MineConfig` overrides on top of the embedded recipe's mining (`testbed.embedded.EMBEDDED_MINING`,
            with `--mine_n` records); None: no offline pairs (`--data.pairs null`).
        sweeps: sweep name -> this variant's x in that sweep (a number for numeric sweeps such as epsilon).
    """

    name: str
    description: str
    fit_args: tuple[str, ...] = ()
    mine: dict[str, Any] | None = field(default_factory=dict)
    sweeps: dict[str, float | str] = field(default_factory=dict)


def _neg(method: str, what: str) -> Variant:
    return Variant(f"neg_{method}", f"negatives from {what}", mine={"method": method}, sweeps={"negatives": method})


def remine_args(every_n_steps: int) -> tuple[str, ...]:
    """Fit options that re-mine the offline pairs from the current policy every N steps (mbpo_lit/remine.py)."""
    return ("--trainer.callbacks+=mbpo_lit.train.remine.Remine", f"--trainer.callbacks.every_n_steps={every_n_steps}")


GRID: tuple[Variant, ...] = (
    Variant(
        "full",
        "the recipe: PGD negatives (eps 32), high-IIG half, prior-conflict pairs, offline + online",
        sweeps={
            "stream": "hybrid",
            "negatives": "pgd",
            "epsilon": 32.0,
            "iig": "high",
            "pair_filter": "prior_conflict",
            "offline_pairs": "mined once",
            "objective": "mbpo",
            "loss_streams": "joint",
        },
    ),
    Variant("offline_only", "offline pairs only", fit_args=("--data.online", "null"), sweeps={"stream": "offline"}),
    Variant("online_only", "online GRPO only", mine=None, sweeps={"stream": "online"}),
    _neg("uniform", "uniform noise (same eps)"),
    _neg("diffusion", "diffusion noise (POVID, t=200)"),
    _neg("none", "the clean image (no perturbation)"),
    _neg("gaussian", "Gaussian noise (std eps, clipped to the same eps)"),
    *(
        Variant(f"eps_{e}", f"PGD negatives at eps {e}/255", mine={"epsilon": float(e)}, sweeps={"epsilon": float(e)})
        for e in (8, 16, 64)
    ),
    Variant("iig_low", "low-IIG filter", mine={"iig_filter": "low"}, sweeps={"iig": "low"}),
    Variant("iig_none", "no IIG filter", mine={"iig_filter": "none"}, sweeps={"iig": "none"}),
    Variant(
        "remine_100",
        "full MBPO, offline pairs re-mined from the current policy every 100 steps",
        fit_args=remine_args(100),
        sweeps={"offline_pairs": "re-mined every 100"},
    ),
    Variant(
        "iig_pairs",
        "MBPO as published: every pair of the high-IIG half, whether or not its rejected answer is the prior's",
        mine={"pair_filter": "iig"},
        sweeps={"pair_filter": "iig"},
    ),
    Variant(
        "separate",
        "full MBPO with the streams weighed apart: L_online + L_offline, each over its own rows",
        fit_args=("--model.loss.streams", "separate"),
        sweeps={"loss_streams": "separate"},
    ),
    Variant(
        "dpo_offline",
        "full MBPO, streams apart, the offline pairs through DPO's bounded term",
        fit_args=("--model.loss.streams", "separate", "--model.loss.offline_loss", "dpo"),
        sweeps={"loss_streams": "separate, dpo"},
    ),
    Variant(
        "sft",
        "supervised fine-tuning on the same data (pairs' chosen + online reference answers)",
        fit_args=("--model.loss.kind", "sft", "--model.loss.beta", "0"),  # no KL term in maximum likelihood
        sweeps={"objective": "sft"},
    ),
    Variant(
        "perturbed_rollouts",
        "online GRPO, 2 of each group's 4 samples from a PGD-perturbed copy of the image (eps 32, 4 steps)",
        fit_args=("--model.sampling.perturbed_k", "2"),
        mine=None,
        sweeps={"adversary": "perturbed rollouts"},
    ),
    Variant(
        "mixed_groups",
        "each mined pair's chosen and rejected answers join an online group of its record",
        fit_args=("--model.loss.offline_as", "mixed_groups"),
        sweeps={"adversary": "mixed groups"},
    ),
)


def select(names: str, grid: tuple[Variant, ...] = GRID) -> list[Variant]:
    """Variants by comma-separated names ("all" for the whole grid), in the order given."""
    by_name = {v.name: v for v in grid}
    if names.strip() == "all":
        return list(grid)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in by_name]
    if unknown or not wanted:
        raise ValueError(f"--variants: unknown {unknown or names!r}; choose from {list(by_name)} or 'all'")
    return [by_name[n] for n in wanted]
