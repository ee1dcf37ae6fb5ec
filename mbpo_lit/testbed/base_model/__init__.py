"""The biased base model: a tiny checkpoint trained on the world until it leans on the language prior.

MBPO (Modality-Balancing Preference Optimization, arXiv 2506.08022) is meant to cure modality imbalance: a
model answering from its language prior instead of the image although the image shows the answer. To show that
without a 7B model, we first *make* a model with the disease, the way real ones are made: a vision encoder that
sees, a language model trained on data whose priors are strong. Four Lightning stages (`stages.py`;
`WarmStartConfig` in `config.py` says why each is there):

1. *vision*: the tower alone learns to tell kinds and colours apart, per token (testbed/vision_stage.py);
2. *grounding*: the language model learns to read the frozen tower on 1-3 object scenes whose colours are drawn
   uniformly (no prior to lean on): existence, colour, description, counting, multiple choice;
3. *scenes*: the same on the world's own three-object scenes, still at uniform colours, where existence and
   colour binding are hardest;
4. *prior*: all families on the world's three-object scenes, the colour questions at `prior_p_color` (1.0)
   typical colours, where "the star is yellow" pays off without binding the colour to the shape; existence,
   counting and descriptions stay at uniform colours, so the prior lives in the colour questions only.

The result is a regular Hugging Face checkpoint directory, cached under `runs/base/` and reused, and is the base
model of the embedded recipe (its mining and GRPO); `skills.py` measures what it can do. The default build is
also shipped inside the package (testbed/shipped.py), so it is unpacked in seconds instead of trained (the
build's time: results/base-model.md).

    python -m mbpo_lit base-model                     # unpacks / builds / reuses it, prints its skills table
    python -m mbpo_lit base-model --from_shipped false --ship true   # rebuilds the default and re-ships it
    python -m mbpo_lit base-model --world.p_color 0.8 --prior_p_color 0.97 --root runs/base-p097

Training is Lightning; an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import lightning as L

from mbpo_lit.testbed.base_model.config import WarmStartConfig
from mbpo_lit.testbed.base_model.skills import SKILL_FAMILIES, format_skills, skills, summary
from mbpo_lit.testbed.base_model.stages import save_checkpoint, stages, train_all
from mbpo_lit.testbed.questions import world_vocabulary
from mbpo_lit.testbed.tiny import write_tiny_checkpoint

__all__ = [
    "SKILL_FAMILIES",
    "WarmStartConfig",
    "build_base_model",
    "format_skills",
    "main",
    "ship",
    "skills",
]


def build_base_model(
    cfg: WarmStartConfig, progress: bool = True, evaluate_n: int = 200, callbacks: list | None = None
) -> Path:
    """Return the directory of the biased base model for `cfg`, training it first if it is not cached.

    The directory is a complete checkpoint (`from_pretrained` loads it); `warmstart.json` beside the weights
    records the config, training time and the skills measured at the end. If the package ships this exact
    build (testbed/shipped.py) and `cfg.from_shipped`, it is unpacked instead of trained. Each stage is kept
    when it finishes and resumes from its last Lightning checkpoint if the build was interrupted.
    """
    from mbpo_lit.testbed.shipped import SHIPPED, shipped_info, unpack_checkpoint

    root = cfg.directory()
    final = root / "model"
    if (final / "warmstart.json").is_file():
        if cfg.ship:
            ship(final, cfg, evaluate_n, progress)
        return final
    shipped = shipped_info()
    if cfg.from_shipped and not cfg.ship and shipped is not None and shipped["key"] == cfg.key():
        return unpack_checkpoint(SHIPPED, final)
    init = root / "init"
    if not (init / "config.json").is_file():
        write_tiny_checkpoint(cfg.arch, init, cfg.spec, extra_text=world_vocabulary(cfg.world))
    L.seed_everything(cfg.seed, verbose=False)
    model, processor, resumed, seconds = train_all(cfg, root, init, progress, callbacks)
    model.eval()
    table = skills(model, processor, cfg.world, evaluate_n, progress=progress)
    save_checkpoint(model, init, final, _build_info(cfg, root, resumed, seconds, table, evaluate_n))
    for name in ("vision", *(st.name for st in stages(cfg))):
        shutil.rmtree(root / f"lightning-{name}", ignore_errors=True)
    if cfg.ship:
        ship(final, cfg, evaluate_n, progress)
    return final


def _build_info(cfg: WarmStartConfig, root: Path, resumed: dict, seconds: dict, table: dict, n: int) -> dict:
    """warmstart.json of a finished build: config, key, time per stage, steps resumed from, skills."""
    vision = root / "vision"
    info = {
        "config": dataclasses.asdict(cfg),
        "key": cfg.key(),
        # per stage, this run's seconds or (finished in an earlier run) the seconds it recorded then
        "stage_seconds": {
            name: seconds.get(name) or json.loads((root / name / "warmstart.json").read_text())["seconds"]
            for name in ("vision", *(st.name for st in stages(cfg)))
            if (root / name / "warmstart.json").is_file() or name in seconds
        },
        "resumed_from_step": resumed,
        **summary(table, n),
    }
    info["train_seconds"] = sum(info["stage_seconds"].values())
    if (vision / "warmstart.json").is_file():  # the vision stage's own report (its heads' held-out skills)
        info["vision_stage"] = json.loads((vision / "warmstart.json").read_text())
    return info


def ship(model_dir: Path, cfg: WarmStartConfig, evaluate_n: int = 200, progress: bool = True) -> Path:
    """Pack the built model into the package (testbed/shipped.py) and measure its skills on the packed weights,
    which are what users of the shipped build get."""
    from mbpo_lit.testbed.shipped import SHIPPED, pack_checkpoint, unpack_checkpoint
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    pack_checkpoint(model_dir, SHIPPED)
    check = unpack_checkpoint(SHIPPED, model_dir.with_name("shipped-check"))
    policy = load_policy(ModelConfig(str(check), precision="fp32", quantization="none", lora=None, device="cpu"))
    built = json.loads((model_dir / "warmstart.json").read_text())
    info = {
        **built,
        **summary(skills(policy.model.eval(), policy.processor, cfg.world, evaluate_n, progress), evaluate_n),
        "skills_float32": built["skills"],
    }
    (SHIPPED / "warmstart.json").write_text(json.dumps(info, indent=2, default=str))
    shutil.rmtree(check, ignore_errors=True)
    return SHIPPED


def base_model(cfg: WarmStartConfig) -> Path:
    """Build (or reuse) the model of `cfg` and print where it is, its attribute gap and its skills table."""
    path = build_base_model(cfg)
    info = json.loads((path / "warmstart.json").read_text())
    print(f"biased base model: {path}")
    print(
        f"  trained {info['train_seconds']:.0f} s; attribute accuracy in-prior {info['in_prior_accuracy']:.3f}, "
        f"counter-prior {info['counter_prior_accuracy']:.3f}, gap {info['gap']:.3f} "
        f"({info['eval_records_per_split']} records per split)"
    )
    if "skills" in info:
        print(format_skills(info["skills"]))
    return path


def main(argv: list[str] | None = None) -> Path:
    from mbpo_lit import cli

    return cli.run(WarmStartConfig, base_model, argv)
