"""`python -m mbpo_lit ablate`: a grid of MBPO variants over seeds on the embedded world, with tidy CSVs.

A variant (experiments/variants.py) is a name, fit overrides (`python -m mbpo_lit fit` options on top of the
embedded recipe, `mbpo_lit/recipes/embedded.yaml`) and a mining config (overrides of `MineConfig`; None trains on
the online stream only). Each (variant, seed) is one short fit of the embedded biased base model followed by a final
evaluation (`testbed.probes`: the eval set's five families, CHAIR on `--captions_n` captions, held-out
phrasings, held-out kinds with `--holdout_kinds`, KL to the base model).

A seed varies every random source of a run: the fresh LoRA weights and every step's rollouts
(`model.sampling.seed`), the batch order (`data.seed`), anything else seeded globally (`seed_everything`), and the
mining's random starts (`MineConfig.seed`), so the spread over seeds is the spread a user would see. Mined
candidates are cached by mining config (the seed included) under `--mined_root` (default `OUT/mined/`), once for
all pair filters (`mining.refilter`), and shared by every variant with the same config. `--mine_per_seed false`
mines one pair set per config for all seeds: cheaper, but its intervals leave out the mining's randomness.

Output (`--out DIR`):
  runs/VARIANT/seedS/          the fit's root dir (its logger's files, by default lightning_logs/version_0/
                               metrics.csv; checkpoints) and result.json, the done marker: a (variant, seed) with
                               it is never rerun
  variants.json                the variants of this grid: name, description, sweeps (what the plots read)
  curves.csv                   tidy: variant, seed, step, metric, value (every logged metric of every run, read
                               by mbpo_lit.train.logged from the CSV or TensorBoard logs of the recipe's logger)
  final.csv                    tidy: variant, seed, metric, value (final evaluation, and n_pairs)
  summary.csv                  variant, metric, n_seeds, mean, ci95_low, ci95_high (Student-t, core/stats.py)
  paired.csv                   variant, reference, metric, n_seeds, mean_diff, ci95_low, ci95_high: each variant
                               minus `--reference` (online_only), paired by seed
  settings.json                the shared settings; another invocation with different ones is refused

A run killed midway has no result.json; the next invocation deletes its directory and runs it again from
step 0. Variants belong to sweeps (`Variant.sweeps`: sweep name -> x value), e.g. "full" is the pgd point of
the "negatives" sweep, epsilon 32 of the "epsilon" sweep and "high" of the "iig" sweep, so shared points are
trained once and the plots (`python -m mbpo_lit plots --directory DIR`) draw each sweep from the same runs.
What the grid has shown so far is in results/ablations.md.

    python -m mbpo_lit ablate --list true
    python -m mbpo_lit ablate --variants full,online_only --seeds [0,1,2] --steps 300 --out runs/ablate --plot true
    python -m mbpo_lit ablate --variants full --fit_args="--model.optim.lr 5e-5" --out runs/ablate-lr5e-5
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mbpo_lit.core.stats import paired_differences, summarize
from mbpo_lit.experiments.variants import GRID, Variant, select
from mbpo_lit.train.logged import LogFormat, read_logged

# The final evaluation's headline numbers, printed per run (every metric of `testbed.probes` goes to the CSVs).
FINAL_METRICS = ("in_prior_accuracy", "counter_prior_accuracy", "heldout_kinds_accuracy", "chair_i", "kl_to_base")
# Every run starts from the embedded recipe; the runner's and the variant's options override it.
RECIPE = "embedded"


@dataclass
class AblationConfig:
    """Settings shared by every run of the grid (each is a command-line option)."""

    out: str = "runs/ablate"
    """the grid's directory (runs, CSVs, settings.json)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of every variant."""
    steps: int = 300
    """training steps per run."""
    val_every: int | None = None
    """validation interval in steps; None: steps // 5."""
    val_n: int = 32
    """validation records per split (the curves)."""
    eval_n: int = 100
    """final evaluation records per split and family (`testbed.probes.Probes.n`)."""
    captions_n: int = 1500
    """captions scored by CHAIR in the final evaluation."""
    holdout_kinds: tuple[str, ...] = ()
    """kinds left out of every training stream (online and mined), scored apart in the final evaluation."""
    mine_n: int = 512
    """records mined per pair set."""
    mined_root: str | None = None
    """cache of mined pair sets; None: OUT/mined."""
    mine_per_seed: bool = True
    """each seed mines its own pairs (MineConfig.seed = the seed); false: one pair set per config for every seed."""
    reference: str = "online_only"
    """the variant paired.csv compares every other one to, seed by seed."""
    fit_args: tuple[str, ...] = ()
    """appended to every fit, after the variant's own."""


# ---------------------------------------------------------------------------------------------- mining
def mine_config(variant: Variant, cfg: AblationConfig, base_model: str, seed: int = 0):
    """The `MineConfig` of a variant at `seed` (None for online-only), its `out` set to the cache directory.

    The embedded recipe's mining settings, `cfg.mine_n` records, the seed (with `cfg.mine_per_seed`; else the
    recipe's), then the variant's overrides; the pairs are mined from the first `n` records of the world's train
    split that ask about no held-out kind, as the embedded recipe's are. The cache directory is
    ROOT/<candidates>/<filter>: variants that differ only in the pair filter share one mining run's candidates.
    """
    from mbpo_lit.mining.config import MineConfig, settings_json
    from mbpo_lit.mining.refilter import candidates_key
    from mbpo_lit.testbed.embedded import EMBEDDED_MINING
    from mbpo_lit.testbed.world_source import WorldSource

    if variant.mine is None:
        return None
    settings = {**EMBEDDED_MINING, "n": cfg.mine_n, **({"seed": seed} if cfg.mine_per_seed else {}), **variant.mine}
    source = WorldSource(["train"], settings["n"], exclude_kinds=cfg.holdout_kinds)
    mc = MineConfig(model=base_model, source=source, **settings)
    candidates = hashlib.sha1(candidates_key(mc).encode()).hexdigest()[:8]
    key = hashlib.sha1(settings_json(dataclasses.replace(mc, out="")).encode()).hexdigest()[:8]
    root = Path(cfg.mined_root) if cfg.mined_root else Path(cfg.out) / "mined"
    group = f"{mc.method}-eps{mc.epsilon:g}-n{mc.n}-{candidates}"
    mc.out = str(root / group / f"{mc.pair_filter}-iig{mc.iig_filter}-{key}")
    return mc


def mine_pairs(mc) -> str:
    """Mine (or reuse) a pair set; returns its dataset directory. The candidates are mined once into the
    directory above `mc.out` (resumable: a killed job continues), and `mc`'s pair filter picks from them."""
    from mbpo_lit.mining import mine_pairs
    from mbpo_lit.mining.refilter import candidates_job, refilter

    dataset = Path(mc.out) / "dataset"
    if (dataset / "dataset_info.json").is_file() and (Path(mc.out) / "summary.json").is_file():
        return str(dataset)
    job = candidates_job(mc, out=str(Path(mc.out).parent / "candidates"))
    if not (Path(job.out) / "summary.json").is_file():
        mine_pairs(job, progress=False)
    return str(refilter(job.out, mc))


# -------------------------------------------------------------------------------------------- one run
def fit_args(variant: Variant, seed: int, pairs: str | None, run_dir: Path, cfg: AblationConfig) -> list[str]:
    """The `python -m mbpo_lit fit` options of one (variant, seed) run: the embedded recipe, then the runner's
    settings, then the variant's options, then `cfg.fit_args` (the last one given wins)."""
    from mbpo_lit.fit import recipe

    val_every = cfg.val_every or max(1, cfg.steps // 5)
    # Validation every `val_every` optimizer steps, counted across epochs (so it may exceed an epoch's batches),
    # on attribute questions of both eval splits: the curves measure what the final evaluation measures.
    return [
        "--config",
        recipe(RECIPE),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.max_steps",
        str(cfg.steps),
        "--trainer.val_check_interval",
        str(val_every),
        "--trainer.check_val_every_n_epoch",
        "null",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--data.val.families",
        "[attribute]",
        "--data.val_n",
        str(cfg.val_n),
        "--seed_everything",
        str(seed),
        "--data.seed",
        str(seed),
        "--model.sampling.seed",  # the fresh LoRA weights and every step's rollouts
        str(seed),
        "--data.pairs",
        pairs or "null",
        "--model.evaluate_after_fit",
        "false",
        "--model.sample_table_every",
        "0",
        *(["--data.online.init_args.exclude_kinds", json.dumps(list(cfg.holdout_kinds))] if cfg.holdout_kinds else []),
        *variant.fit_args,
        *cfg.fit_args,
    ]


def train_and_evaluate(args: list[str], cfg: AblationConfig) -> dict[str, float]:
    """Fit with `args`, then evaluate the trained policy on the eval set and the probes (`testbed.probes`):
    {metric: value}."""
    from mbpo_lit.fit import main as fit_main
    from mbpo_lit.testbed.probes import Probes, evaluate_policy
    from mbpo_lit.testbed.world import WorldConfig

    module = fit_main(args).model
    probes = Probes(n=cfg.eval_n, captions_n=cfg.captions_n, holdout_kinds=tuple(cfg.holdout_kinds))
    return evaluate_policy(module.model, module.processor, WorldConfig(), probes)


def run_dir(cfg: AblationConfig, variant: str, seed: int) -> Path:
    return Path(cfg.out) / "runs" / variant / f"seed{seed}"


def run_one(variant: Variant, seed: int, cfg: AblationConfig, pairs: str | None) -> tuple[dict, bool]:
    """Run (variant, seed) unless its result.json exists; returns (result, whether it ran now)."""
    out = run_dir(cfg, variant.name, seed)
    done = out / "result.json"
    if done.is_file():
        return json.loads(done.read_text()), False
    shutil.rmtree(out, ignore_errors=True)  # a killed run restarts from step 0, in a clean directory
    out.mkdir(parents=True)
    started = time.time()
    final = train_and_evaluate(fit_args(variant, seed, pairs, out, cfg), cfg)
    read_logged(out)  # a run whose curves cannot be read is not done: one line naming its directory, now
    n_pairs = None
    if pairs is not None:
        n_pairs = json.loads((Path(pairs).parent / "summary.json").read_text()).get("pairs")
    result = {
        "variant": variant.name,
        "seed": seed,
        "final": final,
        "n_pairs": n_pairs,
        "pairs": pairs,
        "seconds": time.time() - started,
    }
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, done)  # atomic: result.json exists only for a finished run
    return result, True


# ----------------------------------------------------------------------------------------- tidy CSVs
def curve_rows(variant: str, seed: int, run_dir: str | Path, logger: LogFormat = "auto") -> list[dict]:
    """What one run logged (`mbpo_lit.train.logged.read_logged`: its CSV logs, or else its TensorBoard event
    files) as tidy rows (variant, seed, step, metric, value); the epoch counter is not a curve."""
    return [
        {"variant": variant, "seed": seed, "step": r.step, "metric": r.key, "value": r.value}
        for r in read_logged(run_dir, logger)
        if r.key != "epoch"
    ]


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write rows atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def finished_runs(out: str | Path, names: list[str]) -> list[tuple[str, int, Path, dict]]:
    """(variant, seed, run directory, result) of every finished run of the variants `names` in the grid `out`."""
    runs = []
    for name in names:
        seed_dirs = sorted((Path(out) / "runs" / name).glob("seed*"), key=lambda p: int(p.name[4:]))
        for seed_dir in seed_dirs:
            if (seed_dir / "result.json").is_file():
                result = json.loads((seed_dir / "result.json").read_text())
                runs.append((name, int(result["seed"]), seed_dir, result))
    return runs


def logged_curves(out: str | Path, names: list[str]) -> list[dict]:
    """The rows of curves.csv, read afresh from what each finished run's logger wrote (`curve_rows`)."""
    return [row for name, seed, seed_dir, _ in finished_runs(out, names) for row in curve_rows(name, seed, seed_dir)]


def collect(cfg: AblationConfig, variants: list[Variant]) -> dict[str, Path]:
    """Rebuild curves.csv, final.csv and summary.csv from every finished run of `variants` in `cfg.out`."""
    out = Path(cfg.out)
    names = [v.name for v in variants]
    final = []
    for name, seed, _, result in finished_runs(out, names):
        metrics = dict(result["final"])
        if result.get("n_pairs") is not None:
            metrics["n_pairs"] = result["n_pairs"]
        final += [{"variant": name, "seed": seed, "metric": k, "value": val} for k, val in metrics.items()]
    curves = logged_curves(out, names)
    paths = {name: out / f"{name}.csv" for name in ("curves", "final", "summary", "paired")}
    write_csv(paths["curves"], curves, ["variant", "seed", "step", "metric", "value"])
    write_csv(paths["final"], final, ["variant", "seed", "metric", "value"])
    write_csv(
        paths["summary"],
        summarize(final, ("variant", "metric")),
        ["variant", "metric", "n_seeds", "mean", "ci95_low", "ci95_high"],
    )
    write_csv(
        paths["paired"],
        paired_differences(final, cfg.reference),
        ["variant", "reference", "metric", "n_seeds", "mean_diff", "ci95_low", "ci95_high"],
    )
    return paths


def write_variants(cfg: AblationConfig, variants: list[Variant]) -> None:
    """variants.json: the grid's variants (merged with those of earlier invocations into the same OUT)."""
    path = Path(cfg.out) / "variants.json"
    known = {v["name"]: v for v in json.loads(path.read_text())} if path.is_file() else {}
    for v in variants:
        known[v.name] = {"name": v.name, "description": v.description, "sweeps": v.sweeps}
    path.write_text(json.dumps(list(known.values()), indent=2))


def _print(message: str) -> None:
    print(message, flush=True)


def check_settings(cfg: AblationConfig) -> None:
    """Refuse to mix runs of other settings into one directory (seeds and variants may be added later)."""
    path = Path(cfg.out) / "settings.json"
    mine = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("out", "seeds", "reference")}
    mine = json.loads(json.dumps(mine))  # tuples as lists, as they read back
    if path.is_file() and json.loads(path.read_text()) != mine:
        raise ValueError(
            f"{cfg.out} holds runs made with other settings ({path}: {path.read_text()}); "
            f"use another --out, or the same --steps/--val_n/--eval_n/--mine_n/--fit_args"
        )
    path.write_text(json.dumps(mine, indent=2))


def run_grid(cfg: AblationConfig, variants: list[Variant], log: Callable[[str], None] = _print) -> dict[str, Path]:
    """Mine what the variants need (cached), run every (variant, seed) not yet done, write the CSVs."""
    from mbpo_lit.testbed.base_model import WarmStartConfig, build_base_model

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    check_settings(cfg)
    write_variants(cfg, variants)
    pending = [(v, s) for v in variants for s in cfg.seeds if not (run_dir(cfg, v.name, s) / "result.json").is_file()]
    base = str(build_base_model(WarmStartConfig())) if any(v.mine is not None for v, _ in pending) else None
    total, i = len(variants) * len(cfg.seeds), 0
    for v in variants:
        mined: dict[str, str] = {}  # cache directory -> the pairs' dataset
        for seed in cfg.seeds:
            i += 1
            mc = mine_config(v, cfg, base, seed) if base is not None and v.mine is not None else None
            if (v, seed) in pending and mc is not None and mc.out not in mined:
                log(f"[{i}/{total}] {v.name}: mining pairs into {mc.out}")
                mined[mc.out] = mine_pairs(mc)
            result, ran = run_one(v, seed, cfg, mined.get(mc.out) if mc is not None else None)
            f = result["final"]
            scores = " ".join(f"{k}={f[k]:.3f}" for k in FINAL_METRICS if k in f)
            how = f"done in {result['seconds']:.0f}s" if ran else "already done, skipped"
            log(f"[{i}/{total}] {v.name} seed {seed}: {how}  {scores}")
    return collect(cfg, variants)


@dataclass
class AblateConfig:
    """Run an ablation grid of MBPO variants over seeds on the embedded world: mined pairs cached and shared,
    finished runs skipped, tidy CSVs (curves, final, summary with 95% Student-t intervals) written to OUT."""

    variants: str = "all"
    """comma-separated variant names, or "all" (see --list true)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds of every variant, e.g. [0,1,2]."""
    steps: int = 300
    """training steps per run."""
    val_every: int | None = None
    """validation interval in steps (None: steps // 5)."""
    val_n: int = 32
    """validation records per run (the curves)."""
    eval_n: int = 100
    """final evaluation records per split and family (attribute questions in-prior and counter-prior; existence,
    count and choice on the counter-prior split; the held-out phrasings and kinds probes)."""
    captions_n: int = 1500
    """captions of counter-prior scenes scored by CHAIR in the final evaluation."""
    holdout_kinds: tuple[str, ...] = ()
    """kinds left out of every training stream, online and mined (their questions, not their shapes), and scored
    apart: counter-prior attribute accuracy on them (heldout_kinds_accuracy), e.g. [triangle,ring]."""
    mine_n: int = 512
    """records mined per pair set."""
    mined_root: str | None = None
    """cache of mined pair sets (None: OUT/mined)."""
    mine_per_seed: bool = True
    """each seed mines its own pairs (MineConfig.seed = the seed), so every random source varies with the seed;
    false: one pair set per mining config, shared by every seed (cheaper; intervals then leave out the mining)."""
    reference: str = "online_only"
    """the variant paired.csv compares every other one to (mean difference over seeds both ran, 95% CI)."""
    out: str = "runs/ablate"
    """the grid's directory; runs of other settings there are refused."""
    fit_args: str = ""
    """extra `python -m mbpo_lit fit` options for every run, one string, e.g. --fit_args="--model.optim.lr 1e-4"."""
    plot: bool = False
    """also write the figures (as `python -m mbpo_lit plots --directory OUT`)."""
    list: bool = False
    """list the variants and their sweeps, and exit."""


def ablate(cfg: AblateConfig) -> dict[str, Path] | None:
    """Run the grid `cfg` asks for (or list the variants) and print the CSVs' (and figures') paths."""
    if cfg.list:
        for v in GRID:
            print(f"{v.name:<14} {v.description}   sweeps={v.sweeps}")
        return None
    grid = AblationConfig(
        out=cfg.out,
        seeds=tuple(cfg.seeds),
        steps=cfg.steps,
        val_every=cfg.val_every,
        val_n=cfg.val_n,
        eval_n=cfg.eval_n,
        captions_n=cfg.captions_n,
        holdout_kinds=tuple(cfg.holdout_kinds),
        mine_n=cfg.mine_n,
        mined_root=cfg.mined_root,
        mine_per_seed=cfg.mine_per_seed,
        reference=cfg.reference,
        fit_args=tuple(shlex.split(cfg.fit_args)),
    )
    try:  # a user's mistake: one line, exit code 2
        chosen = select(cfg.variants)
        Path(grid.out).mkdir(parents=True, exist_ok=True)
        check_settings(grid)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    paths = run_grid(grid, chosen)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))
    if cfg.plot:
        from mbpo_lit.experiments.plots import plot_all

        for path in plot_all(grid.out):
            print(f"figure: {path}")
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path] | None:
    from mbpo_lit import cli

    return cli.run(AblateConfig, ablate, argv)


if __name__ == "__main__":
    main()
