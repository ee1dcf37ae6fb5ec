"""Exact resume: `fit` killed (SIGKILL, in a subprocess) after a checkpoint, or in the middle of writing one, and
run again with the same command ends with the same adapter weights and logged the same rewards per step as a
run that was never interrupted."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_fit import tiny_config, world, write_config

STEPS = 4
TESTS = Path(__file__).parent


def fit(config_path: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    )
    return subprocess.run(
        [sys.executable, "-m", "mbpo_lit", "fit", "--config", str(config_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def recipe(tiny_pairs, root: Path, killer: str | None = None) -> Path:
    """The recipe of every run here: 4 steps, a checkpoint each step, every step logged; `killer` adds a callback
    of tests/killer.py that kills the run at step 2."""
    path, pairs = tiny_pairs
    config = tiny_config(path, pairs, root, {"online": world(["train"], 16), "val": None}, steps=STEPS)
    config["trainer"] |= {"log_every_n_steps": 1}
    config["model"]["evaluate_after_fit"] = False
    config["model"]["model"]["lora"]["dropout"] = 0.1  # dropout draws random numbers too: they must repeat
    config["model"]["optim"] |= {"schedule": "cosine", "warmup_steps": 2}  # the schedule's position resumes too
    config["ckpt_path"] = "last"  # as `--ckpt_path last`: the same command continues the last run of this recipe
    if killer:
        config["trainer"]["callbacks"].append({"class_path": f"killer.{killer}", "init_args": {"step": 2}})
    root.mkdir(parents=True, exist_ok=True)
    return Path(write_config(root, config))


def rewards_per_step(root: Path) -> dict[int, tuple[str, str]]:
    """step -> (online, offline) mean reward, from every CSV log of the run (a resumed run logs in a new version;
    a step run twice, before and after the kill, must have logged the same numbers both times)."""
    out: dict[int, tuple[str, str]] = {}
    for log in sorted(root.rglob("metrics.csv")):
        for row in csv.DictReader(log.open()):
            if row.get("online/reward_mean"):
                step = int(row["step"])
                got = (row["online/reward_mean"], row["offline/reward_mean"])
                assert out.setdefault(step, got) == got, (step, out[step], got)
    return out


@pytest.fixture(scope="module")
def uninterrupted(tiny_pairs, tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    done = fit(recipe(tiny_pairs, root))
    assert done.returncode == 0, done.stderr[-3000:]
    return load_file(str(root / "adapter" / "adapter_model.safetensors")), rewards_per_step(root)


@pytest.mark.parametrize("killer", ["KillAtStep", "KillWhileWritingCheckpoint"])
def test_a_killed_fit_rerun_with_the_same_command_ends_as_the_uninterrupted_one(
    killer, uninterrupted, tiny_pairs, tmp_path
):
    whole_adapter, whole_rewards = uninterrupted
    config = recipe(tiny_pairs, tmp_path, killer)
    killed = fit(config)
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL: no clean-up ran
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 1  # the previous checkpoint, whole
    assert not (tmp_path / "adapter").exists()

    config = recipe(tiny_pairs, tmp_path)  # the same recipe, without the test's killer
    resumed = fit(config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in (resumed.stdout + resumed.stderr).lower()
    assert torch.load(last, weights_only=False)["global_step"] == STEPS
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert adapter.keys() == whole_adapter.keys()
    assert max((adapter[k] - whole_adapter[k]).abs().max().item() for k in adapter) <= 1e-6
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # trained, not the initial zeros
    assert rewards_per_step(tmp_path) == whole_rewards and len(whole_rewards) == STEPS
