"""Loggers: every recipe names a CSVLogger whose directory is the run's `trainer.default_root_dir`, also when a run
overrides that directory (as `ablate` does); a short fit with `--trainer.logger` set to CSV, TensorBoard or W&B
(offline) writes under the run's directory; `mbpo_lit.train.logged` reads the CSV and the TensorBoard logs into the
same rows, so `ablate` draws the same curves from either, and names the directory and what it looked for when a
run has no log it can read."""

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from test_fit import RECIPES, tiny_config, world, write_config

from mbpo_lit.experiments import ablate
from mbpo_lit.fit import MBPOCLI, main, recipe
from mbpo_lit.train.logged import read_logged

LOGGERS = {
    "csv": "lightning.pytorch.loggers.CSVLogger",
    "tensorboard": "lightning.pytorch.loggers.TensorBoardLogger",
    "wandb": "lightning.pytorch.loggers.WandbLogger",
}
# What each logger leaves under its save_dir.
FILES = {"csv": "metrics.csv", "tensorboard": "events.out.tfevents.*", "wandb": "*.wandb"}


class Parsed(Exception):
    """Raised with the parsed configuration, before anything is instantiated."""


class ParseOnly(MBPOCLI):
    def before_instantiate_classes(self) -> None:
        raise Parsed(self.config)


def parsed_loggers(args: list[str]) -> list:
    """The `trainer.logger` entries of `fit`'s configuration for `args`, as the trainer would receive them."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.train.module import MBPOModule

    with pytest.raises(Parsed) as parsed:
        ParseOnly(MBPOModule, HybridDataModule, args=args, run=False, save_config_callback=None)
    logger = parsed.value.args[0].trainer.logger
    return logger if isinstance(logger, list) else [logger]


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_logs_csv_under_its_root_dir_and_under_a_runs_own(name, tmp_path):
    path = recipe(name.removesuffix(".yaml"))
    trainer = yaml.safe_load(Path(path).read_text())["trainer"]
    assert trainer["logger"] == {"class_path": LOGGERS["csv"]}  # no save_dir: it follows default_root_dir
    (logger,) = parsed_loggers(["--config", path])
    assert logger.class_path == LOGGERS["csv"] and logger.init_args.save_dir == trainer["default_root_dir"]
    (logger,) = parsed_loggers(["--config", path, "--trainer.default_root_dir", str(tmp_path / "run")])
    assert logger.init_args.save_dir == str(tmp_path / "run")  # ablate's per-run directory


def test_a_directory_the_user_gives_stays_and_every_logger_of_a_list_is_filled(tmp_path):
    root, mine = str(tmp_path / "root"), str(tmp_path / "mine")
    base = ["--config", recipe("embedded"), "--trainer.default_root_dir", root]
    (logger,) = parsed_loggers([*base, "--trainer.logger.save_dir", mine])
    assert logger.init_args.save_dir == mine
    (logger,) = parsed_loggers([*base, f"--trainer.logger={LOGGERS['wandb']}", "--trainer.logger.dir", mine])
    assert logger.init_args.save_dir == "." and logger.init_args.dir == mine  # W&B's other name for it
    (logger,) = parsed_loggers([*base, f"--trainer.logger={LOGGERS['wandb']}"])
    assert logger.init_args.save_dir == root  # W&B's own default "." counts as unset
    both = parsed_loggers([*base, f"--trainer.logger+={LOGGERS['tensorboard']}"])  # beside the recipe's CSVLogger
    assert [(lg.class_path, lg.init_args.save_dir) for lg in both] == [
        (LOGGERS["csv"], root),
        (LOGGERS["tensorboard"], root),
    ]
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.train.module import MBPOModule

    cli = MBPOCLI(MBPOModule, HybridDataModule, args=base, run=False, save_config_callback=None)
    assert type(cli.trainer.logger).__name__ == "CSVLogger" and cli.trainer.logger.save_dir == root


def short_fit(tiny_pairs, tmp_path: Path, *options: str) -> Path:
    """A 2-step fit of the tiny checkpoint, every step logged, into tmp_path/run (the recipe names another root,
    as ablate's per-run override does); returns the run's directory."""
    path, pairs = tiny_pairs
    config = tiny_config(
        path, pairs, tmp_path / "recipe-root", {"online": world(["train"], 8), "val": world(["eval_in_prior"], 2)}
    )
    config["trainer"]["log_every_n_steps"] = 1
    config["model"]["evaluate_after_fit"] = False
    run = tmp_path / "run"
    main(["--config", write_config(tmp_path, config), "--trainer.default_root_dir", str(run), *options])
    assert not (tmp_path / "recipe-root").exists()  # the logger followed the run's root, not the recipe's
    return run


@pytest.mark.parametrize("kind", list(LOGGERS))
def test_a_short_fit_with_each_logger_writes_under_the_runs_root(kind, tiny_pairs, tmp_path, monkeypatch):
    if kind == "wandb":
        pytest.importorskip("wandb")
        monkeypatch.setenv("WANDB_MODE", "offline")
        monkeypatch.setenv("WANDB_SILENT", "true")
    run = short_fit(tiny_pairs, tmp_path, f"--trainer.logger={LOGGERS[kind]}")
    written = list(run.rglob(FILES[kind]))
    assert written, sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    if kind == "wandb":
        import wandb

        wandb.finish()
        with pytest.raises(FileNotFoundError, match=r"W&B curves are read from W&B.*CSVLogger") as err:
            read_logged(run)
        assert str(run) in str(err.value) and "\n" not in str(err.value)
        return
    rows = read_logged(run)
    assert {r.step for r in rows if r.key == "loss"} == {0, 1}  # both steps, from the file this logger wrote
    assert {"val/accuracy", "online/reward_mean", "epoch"} <= {r.key for r in rows}


def ablation_dir(out: Path, run: Path, drop: str) -> Path:
    """An ablation directory whose one finished run (full, seed 0) is a copy of `run` without `drop`'s files."""
    seed_dir = ablate.run_dir(ablate.AblationConfig(out=str(out)), "full", 0)
    shutil.copytree(run, seed_dir)
    for path in list(seed_dir.rglob(FILES[drop])):
        path.unlink()
    final = {k: 0.5 for k in ablate.FINAL_METRICS}
    (seed_dir / "result.json").write_text(json.dumps({"seed": 0, "final": final, "n_pairs": None}))
    return out


def test_ablate_draws_the_same_curves_from_the_csv_and_the_tensorboard_log_of_one_run(tiny_pairs, tmp_path):
    # TensorBoard beside the recipe's CSVLogger: two logs of the very same values
    run = short_fit(tiny_pairs, tmp_path, f"--trainer.logger+={LOGGERS['tensorboard']}")
    from_csv, from_events = read_logged(run, "csv"), read_logged(run, "tensorboard")
    assert [r[:2] for r in from_csv] == [r[:2] for r in from_events]  # the same (step, key) rows, in one order
    assert [r.value for r in from_csv] == pytest.approx([r.value for r in from_events], rel=1e-6, abs=1e-7)
    curves = {}
    for kind, drop in (("csv", "tensorboard"), ("tensorboard", "csv")):
        out = ablation_dir(tmp_path / f"ablate-{kind}", run, drop)
        assert not list(out.rglob(FILES[drop])) and list(out.rglob(FILES[kind]))
        paths = ablate.collect(ablate.AblationConfig(out=str(out)), ablate.select("full"))
        with open(paths["curves"], newline="") as f:
            curves[kind] = {(r["step"], r["metric"]): float(r["value"]) for r in csv.DictReader(f)}
    assert curves["csv"].keys() == curves["tensorboard"].keys()
    assert {m for _, m in curves["csv"]} >= {"loss", "online/accuracy", "val/in_prior_accuracy"}
    for key, value in curves["csv"].items():  # TensorBoard stores float32
        assert curves["tensorboard"][key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


def test_a_run_without_a_readable_log_is_named_with_what_was_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    for directory, logger, expected in (
        (tmp_path / "empty", "auto", "no metrics.csv (CSVLogger) or events.out.tfevents.* (TensorBoardLogger)"),
        (tmp_path / "empty", "tensorboard", "no events.out.tfevents.* (TensorBoardLogger)"),
        (tmp_path / "absent", "auto", "no such run directory"),
    ):
        with pytest.raises(FileNotFoundError) as err:
            read_logged(directory, logger)
        assert str(err.value).startswith(f"{directory}: {expected}") and "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="empty: no metrics.csv"):  # not a StopIteration, not []
        ablate.curve_rows("v", 0, tmp_path / "empty")
    with pytest.raises(ValueError, match="logger must be"):
        read_logged(tmp_path / "empty", "wandb")


def test_csv_logs_are_read_in_version_order_and_empty_cells_are_not_values(tmp_path):
    for version, step in ((10, 7), (2, 3)):
        path = tmp_path / "lightning_logs" / f"version_{version}" / "metrics.csv"
        path.parent.mkdir(parents=True)
        path.write_text(f"epoch,loss,step,val/accuracy\n0,{step / 10},{step},\n0,,{step},0.5\n")
    assert [tuple(r) for r in read_logged(tmp_path)] == [
        (3, "epoch", 0.0),
        (3, "epoch", 0.0),
        (3, "loss", 0.3),
        (3, "val/accuracy", 0.5),
        (7, "epoch", 0.0),
        (7, "epoch", 0.0),
        (7, "loss", 0.7),
        (7, "val/accuracy", 0.5),
    ]


def test_tensorboard_logs_without_tensorboard_installed_say_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "events.out.tfevents.1.host").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    with pytest.raises(ImportError, match=r"holds TensorBoard event files.*\[tensorboard\]"):
        read_logged(tmp_path)
