"""The fit CLI: every shipped recipe parses; a short CLI fit runs, also on DDP with 2 CPU processes."""

import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from mbpo_lit.fit import main

RECIPES = sorted(p.name for p in (files("mbpo_lit") / "recipes").iterdir() if p.name.endswith(".yaml"))


def test_recipes_are_shipped():
    assert {"default.yaml", "qwen2_5_vl_7b_qlora.yaml", "qwen2_vl_7b_qlora.yaml", "llava_1_5_7b_qlora.yaml",
            "qwen2_5_vl_7b_ddp.yaml"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_parses(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(files("mbpo_lit") / "recipes" / name), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "name_or_path:" in printed and "group_size:" in printed


@pytest.fixture
def tiny_job(tiny_pairs):
    return tiny_pairs


def cli_args(path, pairs, root, steps=2):
    return ["--model.model.name_or_path", path, "--data.pairs", pairs, "--data.world", json.dumps({"image_size": 56}),
            "--trainer.max_steps", str(steps), "--trainer.default_root_dir", str(root), "--trainer.val_check_interval", "2",
            "--trainer.limit_val_batches", "1", "--model.evaluate_n", "4", "--model.group_size", "2",
            "--data.offline_per_batch", "1", "--data.online_per_batch", "1", "--data.n_online", "8",
            "--data.val_n", "2", "--model.vocabulary", json.dumps(["red", "green", "blue", "yellow", "purple", "orange"])]


def test_short_cli_fit_writes_checkpoint_and_before_after(tiny_job, tmp_path):
    path, pairs = tiny_job
    main(cli_args(path, pairs, tmp_path))
    results = json.loads((tmp_path / "before_after.json").read_text())
    assert set(results) == {"before", "after"} and "in_prior_accuracy" in results["after"]["summary"]
    assert list(tmp_path.rglob("last.ckpt"))


def test_ddp_on_two_cpu_processes(tiny_job, tmp_path):
    path, pairs = tiny_job
    args = cli_args(path, pairs, tmp_path) + ["--trainer.strategy", "ddp", "--trainer.devices", "2",
                                               "--model.evaluate_after_fit", "false"]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "mbpo_lit.fit", *args], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout  # the second rank joined this run
    assert list(tmp_path.rglob("last.ckpt"))


def test_embedded_pairs_are_cached_per_base_model():
    from mbpo_lit.fit import embedded_pairs_dir

    a, b = embedded_pairs_dir("runs/base/qwen2_5_vl-aaa/model"), embedded_pairs_dir("runs/base/qwen2_5_vl-bbb/model")
    assert a != b and a.parent == b.parent == Path("runs")
    assert embedded_pairs_dir("runs/base/qwen2_5_vl-aaa/model") == a
