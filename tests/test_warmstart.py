"""The biased base model's build: a real checkpoint, cached, and resumable after an interruption."""

import json
import shutil

import lightning as L
import pytest
import torch
from transformers import AutoModelForImageTextToText

from mbpo_lit.testbed.base_model import WarmStartConfig, build_base_model
from mbpo_lit.testbed.tiny import TinySpec
from mbpo_lit.testbed.world import WorldConfig


def small(tmp_path, steps=6, **kw):
    return WarmStartConfig(
        world=WorldConfig(image_size=56),
        spec=TinySpec(),
        train_records=64,
        vision_steps=2,
        grounding_steps=2,
        scene_steps=2,
        steps=steps,
        batch_size=4,
        warmup_steps=1,
        checkpoint_every=2,
        root=str(tmp_path),
        **kw,
    )


class Interrupt(L.Callback):
    def __init__(self, at):
        self.at = at

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def test_builds_a_loadable_checkpoint_and_reuses_it(tmp_path):
    cfg = small(tmp_path)
    path = build_base_model(cfg, progress=False, evaluate_n=4)
    info = json.loads((path / "warmstart.json").read_text())
    assert info["config"]["steps"] == 6 and 0.0 <= info["in_prior_accuracy"] <= 1.0
    assert info["resumed_from_step"] == {"vision": 0, "grounding": 0, "scenes": 0, "prior": 0}
    assert set(info["stage_seconds"]) == {"vision", "grounding", "scenes", "prior"} and info["key"] == cfg.key()
    init = AutoModelForImageTextToText.from_pretrained(cfg.directory() / "init")
    seen = AutoModelForImageTextToText.from_pretrained(cfg.directory() / "vision")
    trained = AutoModelForImageTextToText.from_pretrained(path)
    changed = [not torch.equal(a, b) for a, b in zip(init.parameters(), trained.parameters())]
    assert all(changed)  # every weight trained, the vision tower included
    # The vision stage trained the tower (and merger); the language stages kept it frozen.
    for (name, a), b, c in zip(init.named_parameters(), seen.parameters(), trained.parameters()):
        vision = name.startswith("model.visual.")
        assert torch.equal(b, c) == vision and torch.equal(a, b) != vision, name
    # The skills table: one-object shape and colour, and each family on both eval splits.
    table = info["skills"]
    assert 0 <= table["one_object_shape"] <= 1 and 0 <= table["eval_counter_prior"]["existence_yes_ratio"] <= 1
    assert info["counter_prior_accuracy"] == table["eval_counter_prior"]["attribute"]
    assert set(info["vision_stage"]["vision_skills"]) == {"kind_token_f1", "color_token_f1", "kind_set_exact"}
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert build_base_model(cfg, progress=False) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime  # cached, not retrained


def test_grounding_world_has_few_objects_and_no_colour_prior_and_the_prior_stage_a_strong_one():
    cfg = WarmStartConfig()
    g = cfg.grounding_world()
    assert (g.min_objects, g.max_objects) == (1, cfg.grounding_max_objects)
    assert g.p_color == cfg.grounding_p_color == 1 / len(g.colors)  # every colour equally likely
    assert g.image_size == cfg.world.image_size == cfg.spec.image_size
    assert cfg.prior_world().p_color == cfg.prior_p_color > cfg.world.p_color
    assert WarmStartConfig(prior_p_color=None).prior_world() == cfg.world


def test_cache_key_changes_with_the_world(tmp_path):
    a = small(tmp_path)
    b = small(tmp_path)
    b.world = WorldConfig(p_color=0.5)
    assert a.directory() != b.directory()


def test_interrupted_build_resumes_from_its_last_checkpoint(tmp_path):
    cfg = small(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_base_model(cfg, progress=False, evaluate_n=4, callbacks=[Interrupt(at=5)])
    assert not (cfg.directory() / "model").exists()  # nothing half-made under the final name
    path = build_base_model(cfg, progress=False, evaluate_n=4)
    info = json.loads((path / "warmstart.json").read_text())
    assert info["resumed_from_step"] == {"prior": 4}  # earlier stages were finished and kept, prior resumed
    assert all((cfg.directory() / s / "config.json").is_file() for s in ("vision", "grounding", "scenes"))
    assert set(info["stage_seconds"]) == {"vision", "grounding", "scenes", "prior"}  # earlier runs' times kept


def test_a_build_killed_after_its_last_stage_finishes_from_the_kept_stages(tmp_path):
    cfg = small(tmp_path, steps=2)
    first = build_base_model(cfg, progress=False, evaluate_n=4)
    shutil.rmtree(first)  # as if killed after the last stage was kept, before model/ was written
    path = build_base_model(cfg, progress=False, evaluate_n=4)
    assert json.loads((path / "warmstart.json").read_text())["resumed_from_step"] == {}  # nothing trained again
    assert AutoModelForImageTextToText.from_pretrained(path) is not None


def test_cli_defaults_are_the_cached_base_model_and_options_reach_the_config(tmp_path, monkeypatch, capsys):
    from mbpo_lit.testbed import base_model

    built = []

    def fake_build(cfg):
        built.append(cfg)
        (tmp_path / "warmstart.json").write_text(
            json.dumps(
                {
                    "train_seconds": 1.0,
                    "in_prior_accuracy": 1.0,
                    "counter_prior_accuracy": 0.25,
                    "gap": 0.75,
                    "eval_records_per_split": 4,
                }
            )
        )
        return tmp_path

    monkeypatch.setattr(base_model, "build_base_model", fake_build)
    assert base_model.main([]) == tmp_path
    assert built[0] == WarmStartConfig() and built[0].key() == WarmStartConfig().key()  # the embedded recipe's
    assert "gap 0.750" in capsys.readouterr().out
    base_model.main(["--world.p_color", "0.8", "--steps", "12", "--arch", "llava", "--root", str(tmp_path)])
    cfg = built[1]
    assert (cfg.world.p_color, cfg.steps, cfg.arch, cfg.root) == (0.8, 12, "llava", str(tmp_path))
    assert isinstance(cfg.world, WorldConfig) and cfg.world.image_size == 112
    with pytest.raises(SystemExit):
        base_model.main(["--arch", "gpt2"])
    assert "gpt2" in capsys.readouterr().err
