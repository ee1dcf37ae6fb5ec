"""Inspection helpers behind the notebooks: what one perturbation and one training step look like inside.

The notebooks only call these and draw; the maths lives in the library modules they compose:

- `perturb`: clean vs adversarial (PGD, with its ground-truth log-likelihood at every step) vs noise images
  at the same epsilon, and the model's answer to each (mine.Miner's objective and decoding, core/attack.pgd);
- `iig_by_split`: Image Information Gain of the ground truth on in-prior vs counter-prior questions;
- `step_groups`: one hybrid-GRPO batch laid out group by group: completions, rewards (and their parts),
  advantages, and, after one optimizer step on that very rollout, the importance ratios and which tokens the
  clipped surrogate would clip (what a second inner iteration, mu = 2, sees). It composes the public pieces
  of `MBPOModule` (score, logprobs) with core/grpo.py, mirroring `MBPOModule.training_step`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from mbpo_lit.core.attack import pgd, random_perturbation
from mbpo_lit.core.grpo import clipped_tokens, grpo_loss
from mbpo_lit.mining import MineConfig, Miner
from mbpo_lit.testbed.questions import build_records
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.vlm.chat import answer_token_ids, encode_prompts
from mbpo_lit.vlm.iig import image_information_gain
from mbpo_lit.vlm.policy import reference_mode, trainable_parameters


@dataclass
class Perturbations:
    """Raw images [n, 3, H, W] in [0, 1]: clean and per method, the answers to each, and the PGD trace."""

    records: list[dict]
    clean: torch.Tensor
    images: dict[str, torch.Tensor]  # method -> perturbed images
    answers: dict[str, list[str]]  # "clean" and each method -> the model's greedy answers
    logp: dict[str, torch.Tensor]  # "clean" and each method -> ground-truth log-likelihood (summed over tokens)
    pgd_trace: torch.Tensor  # [PGD steps + 1, n]: ground-truth log-likelihood after each step


def perturb(
    model,
    processor,
    records: Sequence[dict],
    vocabulary: Sequence[str] | None = None,
    epsilon: float = 32.0,
    step_size: float = 4.0,
    steps: int = 10,
    methods: Sequence[str] = ("pgd", "uniform"),
    seed: int = 0,
) -> Perturbations:
    """Perturb the records' images with each method at the same L-inf budget (in /255) and answer them.

    `vocabulary`: answer words for colour / phrase answers (e.g. the world's colours), as mining uses them.
    PGD runs all `steps` (no early stop), so the trace shows the whole descent. `model` must be a plain
    policy (no trainable adapters): Miner freezes its weights, since only the pixels need gradients.
    """
    records = list(records)
    # Miner reads only the attack and decoding settings; model and source name what is attacked, for the record.
    cfg = MineConfig(
        model=str(getattr(model, "name_or_path", "") or type(model).__name__),
        source=f"{len(records)} in-memory records",
        n=len(records),
        epsilon=epsilon,
        step_size=step_size,
        steps=steps,
        early_stop=False,
        seed=seed,
    )
    miner = Miner(model, processor, cfg, list(vocabulary) if vocabulary is not None else None)
    gen = torch.Generator().manual_seed(seed)
    prompts = encode_prompts(processor, [r["question"] for r in records], [r["image"] for r in records])
    clean = torch.stack(miner.codec.raw_images(prompts)).to(miner.device)
    objective = miner.objective(prompts, answer_token_ids(processor, [r["answer"] for r in records]))
    images, trace = {}, torch.empty(0)
    for method in methods:
        if method == "pgd":
            res = pgd(objective, clean, epsilon / 255, step_size / 255, steps, True, "linf", False, gen)
            images[method], trace = res.images, torch.stack(res.trace)
        else:
            images[method] = random_perturbation(method, clean, epsilon / 255, cfg.diffusion_t, gen)
    answers, logp = {}, {}
    for name, x in {"clean": clean, **images}.items():
        answers[name] = miner.answer(prompts, x)
        with torch.no_grad():
            logp[name] = objective(x, torch.arange(len(x)))[0].cpu()
    return Perturbations(records, clean.cpu(), {k: v.cpu() for k, v in images.items()}, answers, logp, trace)


def iig_by_split(model, processor, world: WorldConfig, n: int, baseline: str = "none") -> dict[str, torch.Tensor]:
    """Per-token-mean IIG of the ground-truth answer on n attribute questions of each eval split."""
    out = {}
    for split in ("eval_in_prior", "eval_counter_prior"):
        recs = build_records(world, split, n, ("attribute",))
        gain = image_information_gain(
            model,
            processor,
            [r["question"] for r in recs],
            [r["answer"] for r in recs],
            [r["image"] for r in recs],
            baseline,
        )
        out[split] = gain.mean
    return out


def step_groups(module, batch: dict, update: bool = True) -> list[dict]:
    """One training batch of an `MBPOModule`, one row per sequence (see module docstring).

    Row keys: stream ("online"/"offline"), group, question, answer, completion, reward (and reward parts for
    online rows), advantage; with `update`, also ratio (mean over the sequence's tokens after one AdamW
    step at the module's lr on this rollout's loss) and clipped (share of its tokens clipped by the
    surrogate with the module's eps_low/eps_high). `update` changes the module's adapter weights.
    """
    loss, optim = module.loss, module.optim
    scored = module.score(batch)  # the training step's own roll-out, scoring and advantages
    advantages = scored.advantages
    rows = []
    for i, (r, t) in enumerate(zip(scored.records, scored.texts)):
        row = {
            "stream": scored.stream(i),
            "group": scored.group(i),
            "question": r["question"],
            "answer": r["answer"],
            "completion": t,
            "reward": float(scored.rewards[i]),
        }
        if i < scored.n_online:
            row.update({k: v[i] for k, v in scored.parts.items()})
        row["advantage"] = float(advantages[i])
        rows.append(row)
    if not update:
        return rows
    with torch.no_grad():
        old, m = module.logprobs(scored)
    params = list(trainable_parameters(module.model).values())
    opt = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    logp, _ = module.logprobs(scored)
    grpo_loss(
        logp,
        old,
        advantages.to(logp.device),
        m,
        None,
        beta=0.0,
        eps_low=loss.eps_low,
        eps_high=loss.eps_high,
        aggregation=loss.aggregation,
        max_tokens=module.sampling.max_new_tokens,
    ).loss.backward()
    torch.nn.utils.clip_grad_norm_(params, optim.max_grad_norm)
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        new, _ = module.logprobs(scored)
    ratio = torch.exp(new - old)
    clipped = clipped_tokens(ratio, advantages.to(ratio.device), loss.eps_low, loss.eps_high) & m
    tokens = m.sum(1).clamp(min=1)
    for i, row in enumerate(rows):
        row["ratio"] = float((ratio[i] * m[i]).sum() / tokens[i])
        row["clipped"] = float(clipped[i].sum() / tokens[i])
    return rows


def reward_samples(module, batches: Sequence[dict], reference: bool = False) -> dict[str, list[float]]:
    """Per-sequence rewards of several batches by stream ({"online": [...], "offline": [...]}), without
    updating; `reference` samples the online stream from the adapter-disabled base policy instead."""
    out: dict[str, list[float]] = {"online": [], "offline": []}
    for batch in batches:
        with reference_mode(module.model) if reference else nullcontext():
            rows = step_groups(module, batch, update=False)
        for row in rows:
            out[row["stream"]].append(row["reward"])
    return out
