"""The biased base model: a tiny checkpoint trained on the world until it leans on the language prior.

MBPO (Modality-Balancing Preference Optimization, arXiv 2506.08022) is meant to cure modality imbalance: a
model answering from its language prior instead of the image although the image shows the answer. To show that
without a 7B model, we first *make* a model with the disease, the way real ones are made: a vision encoder that
sees, a language model trained on data whose priors are strong. Three Lightning stages (`WarmStartConfig` says
why each is there and what failed without it):

1. *vision*: the tower alone learns to tell kinds and colours apart, per token (testbed/vision_stage.py);
2. *grounding*: the language model learns to read the frozen tower on 1-3 object scenes whose colours are drawn
   uniformly (no prior to lean on): existence, colour, description, counting, multiple choice;
3. *prior*: all families on the world's three-object scenes with typical colours at `prior_p_color` (0.97), where
   "the circle is red" pays off more cheaply than binding the colour to the shape.

The result is a regular Hugging Face checkpoint directory, cached under `runs/base/` and reused, and is the base
model of the embedded recipe (its mining and GRPO).

    python -m mbpo_lit base-model                     # builds (or reuses) it, prints in-prior / counter-prior accuracy
    python -m mbpo_lit base-model --world.p_color 0.8 --steps 1200 --root runs/base-p08

Training is Lightning; an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mbpo_lit.testbed.tiny import TinySpec, write_tiny_checkpoint
from mbpo_lit.testbed.world import WorldConfig, make_record, world_vocabulary
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
from mbpo_lit.vlm.logprobs import completion_logprobs


@dataclass
class WarmStartConfig:
    """How the biased base model is made. Changing any field builds a new model (the cache key is a hash).

    Three stages, as real multimodal models are made: the vision tower is pretrained and then frozen, the
    language model learns to read it without a prior to lean on, then learns the world with its priors.

    - Vision (`vision_steps`): through the language-model loss alone the tiny tower never learnt shapes
      (existence and multiple choice at chance in every build without this stage). Trained directly, with
      per-token heads made of the language model's own word embeddings ("words"), 1,200 steps reach a
      held-out token-level kind F1 of 0.89 and colour F1 0.99 (free linear heads: 0.80 and 0.99).
    - Grounding (`grounding_*`): 1-3 objects, uniform colours, existence-heavy. Existence is the skill that
      needs the question's word and the image together, and it comes late: existence-only training on one
      object said "yes" to everything for 300 steps and reached 0.71 after 1,000. With colour questions alone
      (the earlier recipe), existence stayed at chance.
    - Prior (`steps`, `prior_p_color`): at the world's 0.9 a model that can see learns to look (a probe:
      counter-prior 0.775, no bias); at 1.0 it leans on the prior (0.075). 0.97 gives in-prior 1.00,
      counter-prior 0.61 on this build.

    Args:
        arch: architecture of the tiny checkpoint.
        world: the world trained on (the embedded one by default: 112 px scenes, three objects, 90% typical
            colours); the prior stage uses it with `prior_p_color`.
        families: question families of the prior stage (repeats weight the mix).
        spec: sizes of the tiny checkpoint (its image size must be the world's).
        vision_steps: steps of the vision tower's pretraining (testbed/vision_stage.py; 0 skips it).
        vision_lr: peak learning rate of the vision stage.
        vision_heads: what the vision stage's per-token heads are: "linear" (free) or "words" (the language
            model's input embeddings of the kind and colour words, aligning the tower to them).
        freeze_vision: keep the vision tower (and merger / projector) fixed after the vision stage, as a
            pretrained encoder is kept in LLaVA-style training.
        grounding_steps: steps of the grounding stage.
        grounding_families: question families of the grounding stage.
        grounding_p_color: probability of typical colours in the grounding stage (1 / len(colors): every
            colour equally likely, no prior to lean on).
        grounding_max_objects: scenes of the grounding stage hold 1..this many objects.
        prior_p_color: probability of typical colours in the prior stage (None: the world's `p_color`).
        steps: steps of the prior stage.
        prior_lr: peak learning rate of the prior stage.
        prior_warmup_steps: linear warm-up steps of the prior stage.
        train_records: distinct records per stage (the loader cycles over them).
        batch_size: of both stages.
        lr: peak learning rate of the grounding stage.
        warmup_steps: linear warm-up steps of the grounding stage.
        checkpoint_every: steps between resumable Lightning checkpoints.
        seed: of the initialisation and the data order.
        root: the cache; the model lands in ROOT/ARCH-KEY/model (KEY: a hash of the fields that change the
            model).
    """

    arch: Literal["qwen2_5_vl", "qwen2_vl", "llava"] = "qwen2_5_vl"
    world: WorldConfig = field(default_factory=WorldConfig)
    # Attribute questions carry the colour prior; the other families let the evaluator score POPE, counting,
    # multiple choice and CHAIR on the same model. Repeats weight the mix.
    families: tuple[str, ...] = ("attribute", "attribute", "attribute", "existence", "choice", "count", "describe")
    spec: TinySpec = field(
        default_factory=lambda: TinySpec(
            hidden_size=128,
            intermediate_size=256,
            num_heads=4,
            num_kv_heads=2,
            vision_hidden_size=192,
            vision_layers=4,
            vocab_size=512,
            image_size=112,
        )
    )
    vision_steps: int = 1200
    vision_lr: float = 2e-3
    vision_heads: Literal["linear", "words"] = "words"
    freeze_vision: bool = True
    grounding_steps: int = 1400
    # Existence weighted up: it is the slowest skill to emerge (see the class docstring).
    grounding_families: tuple[str, ...] = (
        "existence",
        "existence",
        "existence",
        "attribute",
        "attribute",
        "describe",
        "count",
        "choice",
    )
    grounding_p_color: float = 1 / 6
    grounding_max_objects: int = 3
    prior_p_color: float | None = 0.97
    steps: int = 600
    # A gentler prior stage keeps the grounding: with the old unfrozen tower, 1,200 steps at 2e-3 left
    # counter-prior accuracy at 0.03 (in-prior 1.00), a model that had unlearned to look.
    prior_lr: float = 1e-3
    prior_warmup_steps: int = 20
    train_records: int = 20_000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 50
    checkpoint_every: int = 200
    seed: int = 0
    root: str = "runs/base"

    def key(self) -> str:
        """Short hash of every field but `root`: the cache directory name."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("root", "checkpoint_every")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def directory(self) -> Path:
        return Path(self.root) / f"{self.arch}-{self.key()}"

    def grounding_world(self) -> WorldConfig:
        """Few objects per image (one by default), so colour binding is easy and looking pays off at once."""
        return dataclasses.replace(
            self.world,
            n_objects=1,
            min_objects=1,
            max_objects=self.grounding_max_objects,
            p_color=self.grounding_p_color,
        )

    def prior_world(self) -> WorldConfig:
        """The world of the prior stage: the world itself, with `prior_p_color` if set."""
        if self.prior_p_color is None:
            return self.world
        return dataclasses.replace(self.world, p_color=self.prior_p_color)


class WorldRecords(Dataset):
    """Train records generated on the fly: record i is fixed by (world seed, i), so epochs repeat exactly."""

    def __init__(self, world: WorldConfig, size: int, families: tuple[str, ...]):
        self.world, self.size, self.families = world, size, families

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        return make_record(self.world, "train", i, self.families[i % len(self.families)])


class SupervisedCollate:
    """Turns records into a teacher-forcing batch: chat prompt with image, then answer + end-of-turn."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, records: list[dict]) -> dict:
        p = self.processor
        batch = encode_prompts(
            p, [r["question"] for r in records], [r["image"] for r in records], record_ids=[r["id"] for r in records]
        )
        batch, mask = append_completions(
            batch, answer_token_ids(p, [r["answer"] for r in records]), p.tokenizer.pad_token_id
        )
        return {"batch": dict(batch), "mask": mask}


class SupervisedModule(L.LightningModule):
    """Plain maximum likelihood of the answers: the warm start that gives the model its prior."""

    def __init__(self, model: torch.nn.Module, lr: float, warmup_steps: int, total_steps: int):
        super().__init__()
        self.model, self.lr, self.warmup, self.total = model, lr, warmup_steps, total_steps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logp = completion_logprobs(self.model, batch["batch"], batch["mask"])
        mask = batch["mask"][:, -logp.shape[1] :]
        loss = -(logp.sum() / mask.sum())
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]  # a frozen tower stays out
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 10%
            if step < self.warmup:
                return (step + 1) / self.warmup
            return max(0.1, 1 - 0.9 * (step - self.warmup) / max(1, self.total - self.warmup))

        return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}]


def _train_stage(
    model: torch.nn.Module,
    processor,
    world: WorldConfig,
    families: tuple[str, ...],
    steps: int,
    lr: float,
    warmup: int,
    cfg: WarmStartConfig,
    ckpt_dir: Path,
    progress: bool,
    callbacks: list | None,
) -> int:
    """Train one stage with Lightning, resuming from `ckpt_dir/last.ckpt`; returns the step resumed from."""
    loader = DataLoader(
        WorldRecords(world, cfg.train_records, families),
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=SupervisedCollate(processor),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    module = SupervisedModule(model, lr, warmup, steps)
    return _fit(_trainer(steps, cfg, ckpt_dir, progress, callbacks), module, loader, ckpt_dir)


def _trainer(steps: int, cfg: WarmStartConfig, ckpt_dir: Path, progress: bool, callbacks: list | None) -> L.Trainer:
    """A CPU trainer that checkpoints every `cfg.checkpoint_every` steps into `ckpt_dir` (resumable)."""
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every
    )
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[checkpoint, *(callbacks or [])],
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=ckpt_dir,
        log_every_n_steps=50,
    )


def _fit(trainer: L.Trainer, module: L.LightningModule, loader: DataLoader, ckpt_dir: Path) -> int:
    """`trainer.fit`, resuming from `ckpt_dir/last.ckpt` if there is one; returns the step resumed from."""
    last = ckpt_dir / "last.ckpt"
    resumed = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    return resumed


def _train_vision(
    policy, cfg: WarmStartConfig, ckpt_dir: Path, progress: bool, callbacks: list | None
) -> tuple[int, dict]:
    """The vision stage: only the vision tower and merger / projector train, against per-token labels; returns
    the step resumed from and the held-out skills of its heads (`vision_skills`)."""
    from mbpo_lit.testbed.vision_stage import (
        SceneCollate,
        SceneLabels,
        VisionModule,
        token_grid,
        vision_skills,
        vision_world,
        word_vectors,
    )
    from mbpo_lit.vlm.policy import is_vision_parameter

    model = policy.model.train()
    for n, p in model.named_parameters():
        p.requires_grad_(is_vision_parameter(n, policy.arch))
    world = vision_world(cfg.world)
    grid = token_grid(model, policy.processor, world)
    loader = DataLoader(
        SceneLabels(world, cfg.train_records, grid, seed=cfg.seed),
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=SceneCollate(policy.processor),
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    hidden = model.config.get_text_config().hidden_size
    kinds, colors = len(world.kinds), len(world.colors)
    if cfg.vision_heads == "words":
        kinds, colors = (word_vectors(model, policy.processor.tokenizer, w) for w in (world.kinds, world.colors))
    module = VisionModule(model, hidden, kinds, colors, cfg.vision_lr, cfg.vision_steps)
    resumed = _fit(_trainer(cfg.vision_steps, cfg, ckpt_dir, progress, callbacks), module, loader, ckpt_dir)
    return resumed, vision_skills(module.eval(), policy.processor, world, grid)


def _save(model: torch.nn.Module, init: Path, out: Path, info: dict | None = None) -> None:
    """Save a complete checkpoint (weights + the processor files of `init`) atomically at `out`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("model.safetensors", "config.json", "warmstart.json"))
    model.save_pretrained(tmp)
    if info is not None:
        (tmp / "warmstart.json").write_text(json.dumps(info, indent=2, default=str))
    tmp.rename(out)  # only a finished checkpoint is ever found under the final name


def build_base_model(
    cfg: WarmStartConfig, progress: bool = True, evaluate_n: int = 200, callbacks: list | None = None
) -> Path:
    """Return the directory of the biased base model for `cfg`, training it first if it is not cached.

    The directory is a complete checkpoint (`from_pretrained` loads it); `warmstart.json` beside the weights
    records the config, training time and the in-prior / counter-prior accuracy measured at the end. Each
    stage resumes from its last Lightning checkpoint if the build was interrupted.
    """
    from mbpo_lit.vlm.policy import ModelConfig, is_vision_parameter, load_policy

    root = cfg.directory()
    final = root / "model"
    if (final / "warmstart.json").is_file():
        return final
    init = root / "init"
    if not (init / "config.json").is_file():
        write_tiny_checkpoint(cfg.arch, init, cfg.spec, extra_text=world_vocabulary(cfg.world))
    L.seed_everything(cfg.seed, verbose=False)
    start, resumed = time.time(), {}
    grounded = root / "grounded"
    stages = [
        (
            "grounding",
            cfg.grounding_world(),
            cfg.grounding_families,
            cfg.grounding_steps,
            cfg.lr,
            cfg.warmup_steps,
            grounded,
        ),
        ("prior", cfg.prior_world(), cfg.families, cfg.steps, cfg.prior_lr, cfg.prior_warmup_steps, None),
    ]
    vision = root / "vision"
    if cfg.vision_steps > 0 and not (vision / "config.json").is_file() and not (grounded / "config.json").is_file():
        policy = load_policy(ModelConfig(str(init), precision="fp32", quantization="none", lora=None, device="cpu"))
        resumed["vision"], seen = _train_vision(policy, cfg, root / "lightning-vision", progress, callbacks)
        _save(policy.model, init, vision, {"vision_skills": seen, "seconds": time.time() - start})
    source = grounded if (grounded / "config.json").is_file() else vision if cfg.vision_steps > 0 else init
    for name, world, families, steps, lr, warmup, out in stages:
        if out is not None and (out / "config.json").is_file():
            continue  # this stage finished in an earlier run
        policy = load_policy(ModelConfig(str(source), precision="fp32", quantization="none", lora=None, device="cpu"))
        model = policy.model.train()
        frozen = cfg.vision_steps > 0 and cfg.freeze_vision  # the pretrained encoder stays as it is
        for n, prm in model.named_parameters():
            prm.requires_grad_(not (frozen and is_vision_parameter(n, policy.arch)))
        if steps > 0:
            resumed[name] = _train_stage(
                model,
                policy.processor,
                world,
                families,
                steps,
                lr,
                warmup,
                cfg,
                root / f"lightning-{name}",
                progress,
                callbacks,
            )
        if out is not None:
            _save(model, init, out)
            source = out
    seconds = time.time() - start
    model.eval()
    table = skills(model, policy.processor, cfg.world, evaluate_n, progress=progress)
    attribute = table["eval_in_prior"]["attribute"], table["eval_counter_prior"]["attribute"]
    info = {
        "config": dataclasses.asdict(cfg),
        "train_seconds": seconds,
        "resumed_from_step": resumed,
        "eval_records_per_split": evaluate_n,
        "in_prior_accuracy": attribute[0],
        "counter_prior_accuracy": attribute[1],
        "gap": attribute[0] - attribute[1],
        "skills": table,
    }
    if (vision / "warmstart.json").is_file():  # the vision stage's own report (its heads' held-out skills)
        info["vision_stage"] = json.loads((vision / "warmstart.json").read_text())
    _save(model, init, final, info)
    for name in ("vision", *(st[0] for st in stages)):
        shutil.rmtree(root / f"lightning-{name}", ignore_errors=True)
    return final


SKILL_FAMILIES = ("attribute", "existence", "count", "choice")


def skills(model, processor, world: WorldConfig, n: int = 200, progress: bool = True) -> dict:
    """What the model can do, n questions each: name a lone object's shape and colour (its description, on
    held-out one-object scenes of uniform colours), and per eval split attribute, existence (with its yes-ratio),
    counting and multiple choice. The build prints it as a table and stores it in warmstart.json."""
    from mbpo_lit.evaluate import evaluate_records, generate
    from mbpo_lit.testbed.world import build_records, parse_mentions
    from mbpo_lit.testbed.world_source import EVAL_SPLITS

    lone = dataclasses.replace(world, n_objects=1, min_objects=1, max_objects=1, p_color=1 / len(world.colors))
    records = build_records(lone, "train", n, ("describe",), start=10**7)  # far past any training record
    questions, images = [r["question"] for r in records], [r["image"] for r in records]
    preds = generate(model, processor, questions, images, 32, 24, "one object", progress)
    said = [(parse_mentions(p, world) or [(None, None)])[0] for p in preds]
    truth = [r["objects"][0].split() for r in records]  # ["red", "circle"]
    out: dict = {
        "one_object_shape": sum(k == t[1] for (k, _), t in zip(said, truth)) / n,
        "one_object_color": sum(c == t[0] for (_, c), t in zip(said, truth)) / n,
    }
    for split in EVAL_SPLITS:
        records = build_records(world, split, n * len(SKILL_FAMILIES), SKILL_FAMILIES)
        metrics, _ = evaluate_records(model, processor, records, world.colors, desc=split, progress=progress)
        out[split] = {f: metrics["by_family"][f]["accuracy"] for f in SKILL_FAMILIES}
        out[split]["existence_yes_ratio"] = metrics["pope"]["yes_ratio"]
    return out


def format_skills(table: dict) -> str:
    """The skills as rows: one-object shape and colour, then each family on the two eval splits."""
    lines = [
        f"{'skill':<22}{'in-prior':>10}{'counter-prior':>15}",
        f"{'one object: shape':<22}{table['one_object_shape']:>10.3f}{'':>15}",
        f"{'one object: colour':<22}{table['one_object_color']:>10.3f}{'':>15}",
    ]
    for k in (*SKILL_FAMILIES, "existence_yes_ratio"):
        a, b = table["eval_in_prior"][k], table["eval_counter_prior"][k]
        lines.append(f"{k:<22}{a:>10.3f}{b:>15.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    from mbpo_lit.cli import parse_dataclass

    cfg = parse_dataclass(
        WarmStartConfig,
        "Build (or reuse) the biased base model of the embedded world: a tiny "
        "checkpoint trained until it leans on the language prior.",
        argv,
    )
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


if __name__ == "__main__":
    main()
