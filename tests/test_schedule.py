"""The learning-rate schedule (warmup, then constant / linear / cosine decay, stepped per optimizer step) and the
reward plug-ins a recipe names by class_path: by hand, then in short fits that log them."""

import csv
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_fit import tiny_config, world, write_config

from mbpo_lit.core.errors import SettingsError
from mbpo_lit.fit import main
from mbpo_lit.train.schedule import LrCurve, total_optimizer_steps
from mbpo_lit.train.settings import Optimization


def test_the_curve_by_hand():
    cosine = LrCurve(warmup=2, total=10, kind="cosine", min_ratio=0.1)
    assert [cosine(s) for s in (0, 1, 2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    # step 6: 4 of the 8 decay steps done, half-way down the cosine from 1 to 0.1
    assert cosine(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine(10) == cosine(15) == pytest.approx(0.1)
    linear = LrCurve(warmup=0, total=4, kind="linear")
    assert [linear(s) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [LrCurve(warmup=1, total=4)(s) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_the_run_length_in_optimizer_steps():
    assert total_optimizer_steps(300, 300, mu=2, accumulate=1) == 300  # max_steps counts optimizer steps
    assert total_optimizer_steps(-1, 100, mu=2, accumulate=4) == 50  # 100 batches x 2 passes / 4
    with pytest.raises(ValueError, match="set trainer.max_steps"):
        total_optimizer_steps(-1, float("inf"), mu=1, accumulate=1)


def test_bad_schedule_settings_name_the_option():
    with pytest.raises(SettingsError, match="optim.schedule='step'"):
        Optimization(schedule="step")
    with pytest.raises(SettingsError, match="warmup_steps=-1"):
        Optimization(warmup_steps=-1)


def logged(root: Path, key: str) -> dict[int, float]:
    rows = [r for log in sorted(root.rglob("metrics.csv")) for r in csv.DictReader(log.open())]
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def test_warmup_and_decay_are_in_the_logged_learning_rate_and_resume_continues_them(tiny_pairs, tmp_path):
    """4 optimizer steps, warmup 2, linear decay: the logged rate is lr x [1/3, 2/3, 1, 1/2]. A run stopped after
    2 steps and continued from its checkpoint with max_steps 4 takes the same steps: the checkpoint holds the
    position on the curve, the settings the curve."""
    path, pairs = tiny_pairs
    config = tiny_config(path, pairs, tmp_path / "whole", {"online": world(["train"], 8), "val": None}, steps=4)
    config["trainer"]["log_every_n_steps"] = 1
    config["model"]["evaluate_after_fit"] = False
    config["model"]["optim"] |= {"schedule": "linear", "warmup_steps": 2}
    main(["--config", write_config(tmp_path, config)])
    lr = logged(tmp_path / "whole", "lr")
    assert [lr[s] for s in range(4)] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3, 0.5e-3], rel=1e-6)

    config["trainer"]["default_root_dir"] = str(tmp_path / "parts")
    recipe = write_config(tmp_path, config)
    main(["--config", recipe, "--trainer.max_steps", "2"])
    main(["--config", recipe, "--ckpt_path", "last"])
    assert logged(tmp_path / "parts", "lr") == pytest.approx(lr)
    whole, parts = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("whole", "parts"))
    assert max((whole[k] - parts[k]).abs().max().item() for k in whole) <= 1e-6


def test_a_reward_named_only_in_the_yaml_changes_training(tiny_pairs, tmp_path):
    """The same 2-step fit with and without a plug-in reward from the recipe: the plug-in's values are logged
    under its key, enter the online reward with its weight, and move the adapters elsewhere."""
    path, pairs = tiny_pairs
    adapters = {}
    for name, extra in (("plain", []), ("plugin", [{"class_path": "custom_rewards.CharacterCount"}])):
        config = tiny_config(path, pairs, tmp_path / name, {"online": world(["train"], 8), "val": None})
        config["trainer"]["log_every_n_steps"] = 1
        config["model"]["evaluate_after_fit"] = False
        config["model"]["rewards"] = {"extra": extra and [extra[0] | {"init_args": {"weight": 3.0, "scale": 5.0}}]}
        (tmp_path / name).mkdir()
        cli = main(["--config", write_config(tmp_path / name, config)])
        adapters[name] = load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))
    assert [type(r).__name__ for r in cli.model.rewards.values()][-1] == "CharacterCount"
    assert cli.model.rewards["character_count"].weight == 3.0
    count = logged(tmp_path / "plugin", "online/reward_character_count")
    assert len(count) == 2 and all(v > 0 for v in count.values())
    parts = {k: logged(tmp_path / "plugin", f"online/reward_{k}") for k in ("accuracy", "format", "length")}
    total = logged(tmp_path / "plugin", "online/reward_mean")
    for step in count:  # the online reward is the weighted sum of the parts' means
        expected = parts["accuracy"][step] + 0.5 * parts["format"][step] + parts["length"][step] + 3 * count[step]
        assert total[step] == pytest.approx(expected, rel=1e-5)
    assert not logged(tmp_path / "plain", "online/reward_character_count")
    assert any(not torch.equal(adapters["plain"][k], adapters["plugin"][k]) for k in adapters["plain"])
    # the checkpoint loads weights-only (as `--ckpt_path` does) although the recipe names a class of the user's
    last = torch.load(tmp_path / "plugin" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["rewards"]["extra"][0]["class_path"] == "custom_rewards.CharacterCount"


def test_a_module_built_in_python_with_a_users_reward_writes_a_checkpoint_that_loads_weights_only(tmp_path):
    from custom_rewards import CharacterCount

    from mbpo_lit.train.module import MBPOModule
    from mbpo_lit.train.settings import Rewards
    from mbpo_lit.vlm.policy import ModelConfig

    m = MBPOModule(ModelConfig("unused"), rewards=Rewards(extra=[CharacterCount(weight=2.0)]))
    checkpoint = {"state_dict": {}, "hyper_parameters": dict(m.hparams)}
    m.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, tmp_path / "m.ckpt")
    loaded = torch.load(tmp_path / "m.ckpt", weights_only=True)["hyper_parameters"]
    assert loaded["reward_functions"][-1] == "<custom_rewards.CharacterCount weight=2.0>"
