"""The fit CLI: every shipped recipe parses; a short fit on the world and one on benchmark files (no world
involved) run end to end, also on DDP with 2 CPU processes."""

import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import yaml

import benchmark_files as bf
from mbpo_lit.fit import main
from mbpo_lit.mining import MineConfig, mine_pairs
from mbpo_lit.vlm.policy import ModelConfig, load_policy

RECIPES = sorted(p.name for p in (files("mbpo_lit") / "recipes").iterdir() if p.name.endswith(".yaml"))
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]


def test_recipes_are_shipped():
    assert {
        "embedded.yaml",
        "qwen2_5_vl_7b_qlora.yaml",
        "qwen2_vl_7b_qlora.yaml",
        "llava_1_5_7b_qlora.yaml",
        "qwen2_5_vl_7b_ddp.yaml",
    } <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_shipped_recipe_parses_on_its_own(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--config", str(files("mbpo_lit") / "recipes" / name), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model"]["name_or_path"] and printed["model"]["sampling"]["group_size"] >= 2
    assert printed["data"]["val"] and (printed["data"]["online"] or name == "embedded.yaml")


def tiny_config(path, pairs, root, data: dict, steps=2) -> dict:
    """A complete config of a 2-step CPU fit of the tiny checkpoint (written as YAML, as a user would)."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": steps,
            "default_root_dir": str(root),
            "val_check_interval": 2,
            "limit_val_batches": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger"},  # the tests read its metrics.csv
            "callbacks": [
                {
                    "class_path": "mbpo_lit.train.checkpoint.AdapterCheckpoint",
                    "init_args": {"save_last": True, "save_top_k": 0, "every_n_train_steps": 1},
                }
            ],
        },
        "model": {
            "model": {
                "name_or_path": path,
                "precision": "fp32",
                "quantization": "4bit",
                "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            },
            "sampling": {"group_size": 2, "max_new_tokens": 4},
            "optim": {"lr": 1e-3},
            "sample_table_every": 0,
        },
        "data": {"pairs": pairs, "offline_per_batch": 1, "online_per_batch": 1, "val_n": 2} | data,
    }


def world(splits, n, families=("attribute",)):
    return {
        "class_path": "mbpo_lit.testbed.world_source.WorldSource",
        "init_args": {"splits": list(splits), "n": n, "families": list(families), "world": {"image_size": 56}},
    }


def write_config(tmp_path, config) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_short_cli_fit_on_the_world_writes_checkpoint_and_before_after(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    # The eval set holds descriptions too: validation scores the close-ended records, the table all of them.
    config = tiny_config(
        path,
        pairs,
        tmp_path,
        {
            "online": world(["train"], 8),
            "val": world(["eval_in_prior", "eval_counter_prior"], 2, ["attribute", "describe"]),
        },
    )
    config["trainer"]["limit_val_batches"] = None
    config["model"]["rewards"] = {"vocabulary": COLORS}
    cli = main(["--config", write_config(tmp_path, config)])
    results = json.loads((tmp_path / "before_after.json").read_text())
    assert set(results) == {"before", "after", "change", "answers"}
    # The change is after minus before on the same records, each record's two answers kept beside it.
    chair = results["change"]["chair_i"]
    assert chair["change"] == pytest.approx(
        results["after"]["chair"]["chair_i"] - results["before"]["chair"]["chair_i"]
    )
    assert {"ci95_low", "ci95_high"} <= set(chair)  # intervals are tested in test_evaluate (4 records are too few)
    assert len(results["answers"]) == 4 and {"id", "question", "before", "after"} <= set(results["answers"][0])
    assert {"in_prior_accuracy", "counter_prior_accuracy"} <= set(results["after"]["summary"])
    assert results["before"]["all"]["n"] == 2 and results["before"]["chair"]["n"] == 2
    assert list(tmp_path.rglob("last.ckpt"))
    metrics = (next(tmp_path.rglob("metrics.csv"))).read_text().splitlines()[0]
    assert "val/in_prior_accuracy" in metrics and "val/counter_prior_accuracy" in metrics
    # The adapters as peft folders, at the end and beside the last checkpoint: loading one gives the trained LoRA
    # weights (and not the fresh ones: LoRA B starts at zero).
    trained = {k: v for k, v in cli.model.model.named_parameters() if "lora_" in k}
    for folder in (tmp_path / "adapter", next(tmp_path.rglob("last-adapter"))):
        assert {p.name for p in folder.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
        loaded = load_policy(
            ModelConfig(path, precision="fp32", quantization="4bit", lora=None, adapter_path=str(folder))
        )
        lora = {k: v for k, v in loaded.model.named_parameters() if "lora_" in k}
        assert lora.keys() == trained.keys() and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
        assert all(torch.equal(lora[k], trained[k].cpu()) for k in trained)


def test_a_fit_on_benchmark_files_of_real_photographs_never_touches_the_world(tiny_root, tmp_path, photos):
    """Online prompts from a POPE-layout file and a VQA file with renamed columns, pairs mined from that VQA
    file, validation on a POPE file: the whole path runs without the synthetic world being imported."""
    from mbpo_lit.testbed.tiny import ensure_tiny_checkpoint

    path = str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    pope = bf.pope_github(tmp_path / "pope", photos, "adversarial")
    for i, photo in enumerate(photos):
        photo.save(tmp_path / f"{i}.jpg")
    vqa = tmp_path / "vqa.jsonl"
    vqa.write_text(
        "".join(
            json.dumps({"picture": f"{i}.jpg", "prompt": "How many cups are there?", "gt": str(i)}) + "\n"
            for i in range(len(photos))
        )
        + json.dumps({"picture": "gone.jpg", "prompt": "How many cups are there?", "gt": "1"})
        + "\n"
    )
    vqa_source = {
        "class_path": "mbpo_lit.data.sources.Records",
        "init_args": {
            "path": str(vqa),
            "answer_type": "number",
            "columns": {"image": "picture", "question": "prompt", "answer": "gt"},
        },
    }
    mine_args = dict(vqa_source["init_args"])
    from mbpo_lit.data.sources import Records

    pairs = mine_pairs(
        MineConfig(
            model=path,
            source=Records(**mine_args),
            out=str(tmp_path / "mined"),
            n=4,
            batch_size=4,
            steps=1,
            iig_filter="none",
        ),
        progress=False,
    )
    pope_source = {
        "class_path": "mbpo_lit.data.benchmarks.Pope",
        "init_args": {"path": str(pope), "image_root": str(tmp_path / "pope" / "val2014")},
    }
    config = tiny_config(path, str(pairs), tmp_path / "run", {"online": [pope_source, vqa_source], "val": pope_source})
    script = (
        "import sys; from mbpo_lit.fit import main; main(['--config', sys.argv[1]]); "
        "leaked = [m for m in sys.modules if m.startswith('mbpo_lit.testbed')]; "
        "assert not leaked, leaked; print('no testbed module imported')"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, write_config(tmp_path, config)],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "no testbed module imported" in out.stdout
    results = json.loads((tmp_path / "run" / "before_after.json").read_text())
    assert results["after"]["pope"]["n"] == 2 * len(photos)
    # The online VQA file's broken record is listed beside the run's outputs.
    skipped = [json.loads(line) for line in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert [(s["index"], s["reason"].split(":")[0]) for s in skipped] == [(len(photos), "unreadable image")]
    assert {"adversarial_accuracy", "pope_f1"} <= set(results["after"]["summary"])


def test_ddp_on_two_cpu_processes(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    config = tiny_config(path, pairs, tmp_path, {"online": world(["train"], 8), "val": world(["eval_in_prior"], 2)})
    config["trainer"] |= {"strategy": "ddp", "devices": 2}
    config["model"]["evaluate_after_fit"] = False
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [sys.executable, "-m", "mbpo_lit", "fit", "--config", write_config(tmp_path, config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out.stderr + out.stdout  # the second rank joined this run
    assert list(tmp_path.rglob("last.ckpt"))


def test_embedded_pairs_are_cached_per_base_model():
    from mbpo_lit.testbed.embedded import embedded_pairs_dir

    a, b = embedded_pairs_dir("runs/base/qwen2_5_vl-aaa/model"), embedded_pairs_dir("runs/base/qwen2_5_vl-bbb/model")
    assert a != b and a.parent == b.parent == Path("runs")
    assert embedded_pairs_dir("runs/base/qwen2_5_vl-aaa/model") == a


def test_options_without_a_config_apply_on_top_of_the_embedded_recipe_and_a_config_stands_alone(capsys):
    with pytest.raises(SystemExit):
        main(["--trainer.max_steps", "7", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["max_steps"] == 7 and printed["model"]["model"]["name_or_path"] == "embedded"
    with pytest.raises(SystemExit):
        main(["--config", str(files("mbpo_lit") / "recipes" / "qwen2_vl_7b_qlora.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["prepare"] is None and printed["model"]["rewards"]["vocabulary"] is None  # nothing embedded


def test_ckpt_path_last_resumes_the_previous_run_of_the_same_recipe(tiny_pairs, tmp_path):
    """Checkpoints live in <default_root_dir>/checkpoints (not a new logger version per run), so the same command
    with `--ckpt_path last` continues from where the previous run stopped."""
    path, pairs = tiny_pairs
    config = tiny_config(path, pairs, tmp_path, {"online": world(["train"], 8), "val": None})
    config["model"]["evaluate_after_fit"] = False
    recipe_path = write_config(tmp_path, config)
    main(["--config", recipe_path])
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (
        torch.load(last, weights_only=False)["global_step"] == 2
        and (tmp_path / "checkpoints" / "last-adapter").is_dir()
    )
    cli = main(["--config", recipe_path, "--ckpt_path", "last", "--trainer.max_steps", "3"])
    assert cli.trainer.ckpt_path == str(last) and cli.trainer.global_step == 3
    assert torch.load(last, weights_only=False)["global_step"] == 3


@pytest.mark.parametrize(
    "name", ["qwen2_5_vl_7b_qlora", "qwen2_vl_7b_qlora", "llava_1_5_7b_qlora", "qwen2_5_vl_7b_ddp"]
)
def test_the_7b_recipes_precision_trains_every_lora_weight(name, tiny_pairs, tmp_path, monkeypatch):
    """A few steps at a 7B recipe's trainer and model precision and learning rate, on the tiny checkpoint: the
    adapters stay fp32 and nearly every entry of every LoRA matrix moves (under "bf16-true" they were cast to bf16
    and about 2% of the A entries moved: a step of lr 1e-5 is below half a bf16 spacing)."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.fit import MBPOCLI, recipe
    from mbpo_lit.train.module import MBPOModule

    monkeypatch.chdir(tmp_path)
    recipe_cfg = yaml.safe_load(Path(recipe(name)).read_text())
    path, pairs = tiny_pairs
    cfg = tiny_config(path, pairs, tmp_path / "run", {"online": world(["train"], 8)}, steps=3)
    cfg["trainer"]["precision"] = recipe_cfg["trainer"]["precision"]
    cfg["model"]["model"]["precision"] = recipe_cfg["model"]["model"]["precision"]
    cfg["model"]["optim"]["lr"] = recipe_cfg["model"]["optim"]["lr"]
    cfg["model"]["evaluate_after_fit"] = False
    config = write_config(tmp_path, cfg)
    before = {}

    class Watched(MBPOModule):
        def on_train_start(self):
            before.update({n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad})

    cli = MBPOCLI(Watched, HybridDataModule, args=["fit", "--config", config])
    after = {n: p.detach() for n, p in cli.model.model.named_parameters() if p.requires_grad}
    assert after and {p.dtype for p in after.values()} == {torch.float32}
    moved = {n: (after[n] != before[n]).float().mean().item() for n in after if "lora_" in n}
    assert moved and min(moved.values()) > 0.5, sorted(moved.items(), key=lambda kv: kv[1])[:3]
