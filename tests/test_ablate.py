"""Ablation runner: confidence intervals against hand-computed values, grid selection, tidy CSV schemas,
resumability (a finished (variant, seed) is not rerun; a killed one is), and mining shared across seeds."""

import csv
import json
import math
from pathlib import Path

import pytest

from mbpo_lit.core.stats import mean_ci, summarize, t_quantile_975
from mbpo_lit.experiments import ablate
from mbpo_lit.experiments.ablate import AblationConfig
from mbpo_lit.experiments.variants import GRID, Variant, select


def test_mean_ci_matches_hand_computation():
    # values 1, 2, 3: mean 2, s = 1, t(0.975, 2) = 4.3027 -> half width 4.3027 / sqrt(3) = 2.48417
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.n == 3 and ci.mean == pytest.approx(2.0)
    assert ci.low == pytest.approx(2 - 2.48417, abs=1e-4) and ci.high == pytest.approx(2 + 2.48417, abs=1e-4)
    # 0.5, 0.7: mean 0.6, s = 0.141421, t(1) = 12.7062 -> half width 12.7062 * 0.141421 / sqrt(2) = 1.27062
    assert mean_ci([0.5, 0.7]).high == pytest.approx(0.6 + 1.27062, abs=1e-4)
    one = mean_ci([0.4])
    assert (one.n, one.low, one.high) == (1, 0.4, 0.4)
    assert mean_ci([]).n == 0 and math.isnan(mean_ci([float("nan")]).mean)


def test_paired_differences_pair_by_seed_by_hand():
    from mbpo_lit.core.stats import paired_differences

    rows = [
        {"variant": v, "seed": s, "metric": "acc", "value": x}
        for v, s, x in [("ref", 0, 0.5), ("ref", 1, 0.7), ("ref", 2, 0.6), ("a", 0, 0.6), ("a", 1, 0.9), ("a", 3, 1.0)]
    ]
    (row,) = paired_differences(rows, "ref")  # seed 2 (ref only) and seed 3 (a only) have no pair
    diffs = [0.1, 0.2]
    ci = mean_ci(diffs)
    assert (row["variant"], row["reference"], row["n_seeds"]) == ("a", "ref", 2)
    assert row["mean_diff"] == pytest.approx(0.15) and row["ci95_low"] == pytest.approx(ci.low)
    assert ci.high - 0.15 == pytest.approx(12.706 * 0.005**0.5 / 2**0.5, rel=1e-3)  # t(1) x sd / sqrt(2)


def test_t_quantiles_table_and_expansion():
    assert t_quantile_975(4) == pytest.approx(2.7764)
    assert t_quantile_975(30) == pytest.approx(2.0423)
    assert t_quantile_975(60) == pytest.approx(2.0003, abs=2e-4)  # expansion beyond the table
    assert t_quantile_975(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 29, 31, 45, 200):
        assert t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=2e-4)


def test_summarize_groups_in_first_seen_order():
    rows = [
        {"variant": "b", "metric": "m", "value": 1.0},
        {"variant": "a", "metric": "m", "value": 3.0},
        {"variant": "b", "metric": "m", "value": 3.0},
    ]
    out = summarize(rows, ("variant", "metric"))
    assert [r["variant"] for r in out] == ["b", "a"]
    assert out[0]["n_seeds"] == 2 and out[0]["mean"] == 2.0 and out[1]["ci95_low"] == 3.0


def test_grid_has_the_required_variants_and_sweeps():
    names = {v.name for v in GRID}
    assert {
        "full",
        "offline_only",
        "online_only",
        "neg_uniform",
        "neg_diffusion",
        "neg_none",
        "iig_low",
        "iig_none",
        "neg_gaussian",
        "remine_100",
        "sft",
    } <= names
    sweeps = {s: {v.sweeps[s] for v in GRID if s in v.sweeps} for s in ("negatives", "epsilon", "iig", "stream")}
    assert sweeps["negatives"] == {"pgd", "uniform", "gaussian", "diffusion", "none"}
    assert len(sweeps["epsilon"]) >= 3 and all(isinstance(x, float) for x in sweeps["epsilon"])
    assert sweeps["iig"] == {"high", "low", "none"} and sweeps["stream"] == {"hybrid", "offline", "online"}
    assert next(v for v in GRID if v.name == "online_only").mine is None
    assert [v.name for v in select("online_only, full")] == ["online_only", "full"]
    assert len(select("all")) == len(GRID)
    with pytest.raises(ValueError, match="unknown.*nope"):
        select("full,nope")


def test_fit_args_carry_seed_pairs_and_variant_overrides(tmp_path):
    from mbpo_lit.fit import recipe

    cfg = AblationConfig(out=str(tmp_path), steps=50, fit_args=("--model.optim.lr", "1e-4"))
    offline = next(v for v in GRID if v.name == "offline_only")
    args = ablate.fit_args(offline, 2, None, tmp_path / "r", cfg)
    flags = dict(zip(args[::2], args[1::2]))
    assert args[:2] == ["--config", recipe("embedded")]  # the embedded recipe first, every option overrides it
    assert flags["--seed_everything"] == "2" and flags["--data.seed"] == "2" and flags["--data.pairs"] == "null"
    assert flags["--model.sampling.seed"] == "2"  # the fresh LoRA weights and the rollouts vary with the seed too
    assert flags["--trainer.max_steps"] == "50" and flags["--trainer.val_check_interval"] == "10"
    assert flags["--data.online"] == "null" and args[-2:] == ["--model.optim.lr", "1e-4"]  # user's options last


def test_fit_args_parse_against_the_fit_command(tmp_path):
    """Every option the runner writes is one `python -m mbpo_lit fit` accepts (nothing is trained)."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.fit import MBPOCLI
    from mbpo_lit.train.module import MBPOModule

    cfg = AblationConfig(out=str(tmp_path), steps=50, fit_args=("--model.optim.lr", "3e-5"))
    offline = next(v for v in GRID if v.name == "offline_only")
    args = ablate.fit_args(offline, 1, str(tmp_path / "pairs"), tmp_path / "r", cfg)
    cli = MBPOCLI(MBPOModule, HybridDataModule, args=args, run=False, save_config_callback=None)
    assert cli.model.optim.lr == 3e-5 and not cli.datamodule.online  # no online stream
    assert cli.datamodule.pairs_path == str(tmp_path / "pairs") and cli.trainer.max_steps == 50
    assert cli.trainer.check_val_every_n_epoch is None  # val_check_interval counts steps across epochs
    assert cli.datamodule.val.families == ["attribute"] and len(cli.datamodule.val.splits) == 2


def test_the_new_variants_fit_args_parse_into_a_remine_callback_and_the_sft_loss(tmp_path):
    """remine_100 adds the Remine callback (every 100 steps) after the recipe's checkpoint callback; sft switches
    the loss; neg_gaussian only changes the mining. Parsed by the fit command itself (nothing is trained)."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.fit import MBPOCLI
    from mbpo_lit.train.checkpoint import AdapterCheckpoint
    from mbpo_lit.train.module import MBPOModule
    from mbpo_lit.train.remine import Remine

    by_name = {v.name: v for v in GRID}
    assert by_name["remine_100"].fit_args == (
        "--trainer.callbacks+=mbpo_lit.train.remine.Remine",
        "--trainer.callbacks.every_n_steps=100",
    )
    assert by_name["remine_100"].mine == {} and by_name["sft"].mine == {}  # the full variant's pairs
    assert by_name["sft"].fit_args == ("--model.loss.kind", "sft", "--model.loss.beta", "0")
    assert by_name["neg_gaussian"].mine == {"method": "gaussian"} and by_name["neg_gaussian"].fit_args == ()
    cfg = AblationConfig(out=str(tmp_path), steps=300)

    def parse(name):
        args = ablate.fit_args(by_name[name], 0, str(tmp_path / "pairs"), tmp_path / name, cfg)
        return MBPOCLI(MBPOModule, HybridDataModule, args=args, run=False, save_config_callback=None)

    cli = parse("remine_100")
    remine = [c for c in cli.trainer.callbacks if isinstance(c, Remine)]
    assert len(remine) == 1 and remine[0].every_n_steps == 100 and remine[0].max_records is None
    assert any(isinstance(c, AdapterCheckpoint) for c in cli.trainer.callbacks)  # the recipe's, kept
    assert cli.model.loss.kind == "grpo" and cli.datamodule.pairs_path == str(tmp_path / "pairs")
    cli = parse("sft")
    assert (
        cli.model.loss.kind == "sft"
        and cli.model.loss.beta == 0
        and not any(isinstance(c, Remine) for c in cli.trainer.callbacks)
    )
    assert cli.model.optim.lr == parse("neg_gaussian").model.optim.lr  # same lr and steps as the others
    assert cli.trainer.max_steps == 300 and cli.datamodule.online


def test_mining_cache_is_keyed_by_config(tmp_path):
    cfg = AblationConfig(out=str(tmp_path), mine_n=64)
    dirs = {v.name: ablate.mine_config(v, cfg, "BASE") for v in GRID}
    assert dirs["online_only"] is None
    assert dirs["offline_only"].out == dirs["full"].out  # same mining config: one shared pair set
    shared = ("offline_only", "remine_100", "sft", "separate", "dpo_offline", "mixed_groups")
    for same in shared:  # full's pairs (remine_100 starts from them; the loss variants train on them)
        assert dirs[same].out == dirs["full"].out
    outs = [mc.out for name, mc in dirs.items() if mc is not None and name not in shared]
    assert len(set(outs)) == len(outs)  # every other mining config its own cache directory
    assert dirs["full"].n == 64 and dirs["eps_8"].epsilon == 8.0 and dirs["iig_low"].iig_filter == "low"
    assert (dirs["neg_gaussian"].method, dirs["neg_gaussian"].epsilon) == ("gaussian", dirs["full"].epsilon)
    assert ablate.mine_config(GRID[0], cfg, "BASE").out == dirs["full"].out  # stable key
    # a pair filter of its own, from the same mined candidates (one mining run, `mining.refilter`)
    parent = {name: Path(mc.out).parent for name, mc in dirs.items() if mc is not None}
    assert parent["iig_pairs"] == parent["full"] == parent["iig_low"] and parent["eps_8"] != parent["full"]


def test_held_out_kinds_leave_every_training_stream(tmp_path):
    cfg = AblationConfig(out=str(tmp_path), mine_n=64, holdout_kinds=("triangle", "ring"))
    full = next(v for v in GRID if v.name == "full")
    args = ablate.fit_args(full, 0, "P", tmp_path / "run", cfg)
    flags = dict(zip(args[::2], args[1::2]))
    assert json.loads(flags["--data.online.init_args.exclude_kinds"]) == ["triangle", "ring"]  # online
    assert ablate.mine_config(full, cfg, "BASE").source.exclude_kinds == ["triangle", "ring"]  # mined
    plain = AblationConfig(out=str(tmp_path), mine_n=64)
    assert "--data.online.init_args.exclude_kinds" not in ablate.fit_args(full, 0, "P", tmp_path, plain)
    assert ablate.mine_config(full, plain, "BASE").out != ablate.mine_config(full, cfg, "BASE").out


def test_each_seed_mines_its_own_pairs_unless_told_to_share_them(fake_runner, tmp_path):
    full = next(v for v in GRID if v.name == "full")
    per_seed = AblationConfig(out=str(tmp_path / "a"), mine_n=64)
    a, b = (ablate.mine_config(full, per_seed, "BASE", seed) for seed in (0, 1))
    assert (a.seed, b.seed) == (0, 1) and a.out != b.out
    shared = AblationConfig(out=str(tmp_path / "b"), mine_n=64, mine_per_seed=False)
    assert ablate.mine_config(full, shared, "BASE", 0).out == ablate.mine_config(full, shared, "BASE", 1).out
    ablate.run_grid(AblationConfig(out=str(tmp_path / "c"), seeds=(0, 1), steps=20), [full], log=lambda m: None)
    assert len(set(fake_runner["mine"])) == 2  # one pair set per seed
    assert [pairs for _, pairs in fake_runner["fit"]] == [str(Path(d) / "dataset") for d in fake_runner["mine"]]


def _fake_metrics(run_dir, seed):
    path = run_dir / "lightning_logs" / "version_0" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(f"epoch,loss,step,val/counter_prior_accuracy\n0,{0.5 + seed},9,\n0,,9,{0.1 * seed}\n0,{0.25},19,\n")


@pytest.fixture
def fake_runner(monkeypatch):
    """Replace fitting and mining by fakes that count their calls and write a CSVLogger-like metrics.csv."""
    calls = {"fit": [], "mine": []}

    def train_and_evaluate(args, cfg):
        flags = dict(zip(args[::2], args[1::2]))
        seed = int(flags["--seed_everything"])
        from pathlib import Path

        if not calls.get("no_log"):
            _fake_metrics(Path(flags["--trainer.default_root_dir"]), seed)
        calls["fit"].append((flags["--trainer.default_root_dir"], flags["--data.pairs"]))
        if len(calls["fit"]) == calls.get("kill_at"):
            raise KeyboardInterrupt
        return {"in_prior_accuracy": 1.0, "counter_prior_accuracy": 0.1 * seed, "gap": 1 - 0.1 * seed}

    def mine_pairs(mc):
        from pathlib import Path

        calls["mine"].append(mc.out)
        (Path(mc.out) / "dataset").mkdir(parents=True, exist_ok=True)
        (Path(mc.out) / "summary.json").write_text(json.dumps({"pairs": 7}))
        return str(Path(mc.out) / "dataset")

    monkeypatch.setattr(ablate, "train_and_evaluate", train_and_evaluate)
    monkeypatch.setattr(ablate, "mine_pairs", mine_pairs)
    monkeypatch.setattr("mbpo_lit.testbed.base_model.build_base_model", lambda cfg: "BASE")
    return calls


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_grid_writes_tidy_csvs_and_summary(fake_runner, tmp_path):
    cfg = AblationConfig(out=str(tmp_path), seeds=(0, 1, 2), steps=20)
    paths = ablate.run_grid(cfg, select("full,online_only"), log=lambda m: None)
    curves, final, summary = (_read(paths[k]) for k in ("curves", "final", "summary"))
    assert list(curves[0]) == ["variant", "seed", "step", "metric", "value"]
    assert list(final[0]) == ["variant", "seed", "metric", "value"]
    assert list(summary[0]) == ["variant", "metric", "n_seeds", "mean", "ci95_low", "ci95_high"]
    # 3 logged values per run (empty cells dropped, epoch dropped), 2 variants x 3 seeds
    assert len(curves) == 18 and {r["metric"] for r in curves} == {"loss", "val/counter_prior_accuracy"}
    assert {(r["variant"], r["seed"], r["step"], r["value"]) for r in curves if r["metric"] == "loss"} >= {
        ("full", "2", "9", "2.5"),
        ("online_only", "0", "19", "0.25"),
    }
    # n_pairs only where there are pairs; online_only trains with --data.pairs null
    assert {r["variant"] for r in final if r["metric"] == "n_pairs"} == {"full"}
    assert [p for d, p in fake_runner["fit"] if "online_only" in d] == ["null"] * 3
    cp = next(r for r in summary if r["variant"] == "full" and r["metric"] == "counter_prior_accuracy")
    ci = mean_ci([0.0, 0.1, 0.2])
    assert cp["n_seeds"] == "3" and float(cp["mean"]) == pytest.approx(0.1)
    assert float(cp["ci95_low"]) == pytest.approx(ci.low) and float(cp["ci95_high"]) == pytest.approx(ci.high)
    paired = _read(paths["paired"])
    cp_diff = next(r for r in paired if r["variant"] == "full" and r["metric"] == "counter_prior_accuracy")
    assert cp_diff["reference"] == "online_only" and float(cp_diff["mean_diff"]) == pytest.approx(0.0)
    assert {r["variant"] for r in paired} == {"full"}
    # one mining job per seed of "full" (every random source varies with the seed), none for online_only
    assert len(set(fake_runner["mine"])) == 3
    meta = json.loads((tmp_path / "variants.json").read_text())
    assert [v["name"] for v in meta] == ["full", "online_only"] and meta[0]["sweeps"]["epsilon"] == 32.0


def test_finished_runs_are_not_rerun_and_killed_ones_are(fake_runner, tmp_path):
    cfg = AblationConfig(out=str(tmp_path), seeds=(0, 1), steps=20)
    fake_runner["kill_at"] = 2  # the second run dies before writing its result
    with pytest.raises(KeyboardInterrupt):
        ablate.run_grid(cfg, select("online_only"), log=lambda m: None)
    assert (tmp_path / "runs/online_only/seed0/result.json").is_file()
    assert not (tmp_path / "runs/online_only/seed1/result.json").is_file()
    fake_runner["kill_at"] = None
    messages = []
    ablate.run_grid(cfg, select("online_only"), log=messages.append)
    assert [d.split("/")[-1] for d, _ in fake_runner["fit"]] == ["seed0", "seed1", "seed1"]
    assert "already done, skipped" in messages[0] and "done in" in messages[1]
    # the restarted run's directory was cleaned: one metrics.csv, so no duplicated curve rows
    assert len(list((tmp_path / "runs/online_only/seed1").rglob("metrics.csv"))) == 1
    ablate.run_grid(cfg, select("online_only"), log=lambda m: None)
    assert len(fake_runner["fit"]) == 3  # everything finished: nothing rerun
    assert len(_read(tmp_path / "final.csv")) == 2 * 3


def test_a_run_whose_log_cannot_be_read_is_named_and_not_marked_done(fake_runner, tmp_path, capsys):
    """A fit that left no CSV or TensorBoard log (a W&B-only logger, say) stops the grid at that run, in one line
    naming its directory, before its result.json marks it done; never empty curves."""
    fake_runner["no_log"] = True
    seed_dir = tmp_path / "runs/online_only/seed0"
    with pytest.raises(SystemExit) as exit_:
        ablate.main(["--variants", "online_only", "--seeds", "[0]", "--steps", "20", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.startswith(f"error: {seed_dir}: no metrics.csv") and "\n" not in err
    assert not (seed_dir / "result.json").exists() and not (tmp_path / "curves.csv").exists()


def test_other_settings_in_the_same_directory_are_refused(fake_runner, tmp_path):
    ablate.run_grid(AblationConfig(out=str(tmp_path), seeds=(0,), steps=20), select("online_only"), log=lambda m: None)
    # more seeds and more variants with the same settings are fine
    ablate.run_grid(
        AblationConfig(out=str(tmp_path), seeds=(0, 1), steps=20), select("online_only,full"), log=lambda m: None
    )
    with pytest.raises(ValueError, match="other settings"):
        ablate.run_grid(
            AblationConfig(out=str(tmp_path), seeds=(0,), steps=40), select("online_only"), log=lambda m: None
        )


def test_cli_rejects_an_unknown_variant(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        ablate.main(["--variants", "fulll", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "fulll" in err and "Traceback" not in err


def test_cli_lists_variants_and_prints_its_config(capsys):
    assert ablate.main(["--list", "true"]) is None
    out = capsys.readouterr().out
    assert all(v.name in out for v in GRID)
    with pytest.raises(SystemExit) as exit_:
        ablate.main(["--seeds", "[3,4]", "--steps", "7", "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    assert "steps: 7" in printed and "- 3" in printed and "variants: all" in printed


def test_cli_runs_the_grid_with_its_options(fake_runner, tmp_path, capsys):
    paths = ablate.main(
        [
            "--variants",
            "online_only",
            "--seeds",
            "[1]",
            "--steps",
            "20",
            "--out",
            str(tmp_path),
            "--fit_args=--model.optim.lr 1e-4 --model.loss.beta 0.04",
        ]
    )
    assert set(paths) == {"curves", "final", "summary", "paired"}
    settings = json.loads((tmp_path / "settings.json").read_text())
    assert settings["steps"] == 20 and settings["fit_args"] == ["--model.optim.lr", "1e-4", "--model.loss.beta", "0.04"]
    assert [d.split("/")[-1] for d, _ in fake_runner["fit"]] == ["seed1"]


def test_variant_defaults_train_on_the_default_mining():
    v = Variant("x", "y")
    assert v.mine == {} and v.fit_args == () and v.sweeps == {}
