"""The biased base model: a tiny checkpoint trained on the world until it leans on the language prior.

MBPO (Modality-Balancing Preference Optimization, arXiv 2506.08022) is meant to cure modality imbalance: a
model answering from its language prior instead of the image although the image shows the answer. To show that
without a 7B model, we first *make* a model with the disease, the way real ones are made: a vision encoder that
sees, a language model trained on data whose priors are strong. Four Lightning stages (`WarmStartConfig` says
why each is there and what failed without it):

1. *vision*: the tower alone learns to tell kinds and colours apart, per token (testbed/vision_stage.py);
2. *grounding*: the language model learns to read the frozen tower on 1-3 object scenes whose colours are drawn
   uniformly (no prior to lean on): existence, colour, description, counting, multiple choice;
3. *scenes*: the same on the world's own three-object scenes, still at uniform colours, where existence and
   colour binding are hardest;
4. *prior*: all families on the world's three-object scenes, the colour questions at `prior_p_color` (1.0)
   typical colours, where "the star is yellow" pays off without binding the colour to the shape; existence,
   counting and descriptions stay at uniform colours, so the prior lives in the colour questions only.

The result is a regular Hugging Face checkpoint directory, cached under `runs/base/` and reused, and is the base
model of the embedded recipe (its mining and GRPO). The default build is also shipped inside the package
(testbed/shipped.py), so it is unpacked in seconds instead of trained for about 20 minutes.

    python -m mbpo_lit base-model                     # unpacks / builds / reuses it, prints its skills table
    python -m mbpo_lit base-model --from_shipped false --ship true   # rebuilds the default and re-ships it
    python -m mbpo_lit base-model --world.p_color 0.8 --prior_p_color 0.97 --root runs/base-p097

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
from mbpo_lit.testbed.questions import make_record, world_vocabulary
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
from mbpo_lit.vlm.logprobs import completion_logprobs

_NOT_IN_KEY = ("root", "checkpoint_every", "from_shipped", "ship")


@dataclass
class WarmStartConfig:
    """How the biased base model is made. Changing any field builds a new model (the cache key is a hash).

    Four stages, as real multimodal models are made: the vision tower is pretrained and then frozen, the
    language model learns to read it without a prior to lean on, then learns the world with its priors.
    Skills below: 200 questions per family and split (`skills`).

    - Vision (`vision_steps`): through the language-model loss alone the tiny tower never learnt shapes
      (existence and multiple choice at chance in every build without this stage). Trained directly, with
      per-token heads made of the language model's own word embeddings ("words"), 1,200 steps reach a
      held-out token-level kind F1 of 0.89 and colour F1 0.99 (free linear heads: 0.80 and 0.99).
    - Grounding (`grounding_*`): 1-3 objects, uniform colours, existence-heavy. Existence is the skill that
      needs the question's word and the image together, and it comes late: existence-only training on one
      object said "yes" to everything for 300 steps and reached 0.71 after 1,000. With colour questions alone
      (the earlier recipe), existence stayed at chance. After this stage, on three-object scenes: existence
      0.69 / 0.585 with a yes-ratio of 0.25 (it missed objects).
    - Scenes (`scene_*`): 1,000 more steps on the world's three-object scenes at uniform colours raised that
      to 0.895 / 0.865, yes-ratio 0.44 / 0.49.
    - Prior (`steps`, `prior_p_color`, `prior_uniform_families`): a model that sees this well learns to look
      unless the prior is total: colour questions at 0.97 and 0.99 typical colours left counter-prior
      attribute accuracy at 0.74 and 0.705; at 1.0 it is 0.195 (in-prior 1.00). With existence questions at
      the prior's colours too, existence on counter-prior scenes fell to 0.715 (the colour a shortcut for the
      kind), hence `prior_uniform_families`.

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
        scene_steps: steps of the scenes stage (the world's scenes at `grounding_p_color`, lr `lr`).
        scene_families: question families of the scenes stage.
        prior_p_color: probability of typical colours in the prior stage (None: the world's `p_color`).
        prior_uniform_families: families of the prior stage asked on scenes at `grounding_p_color` instead.
        steps: steps of the prior stage.
        prior_lr: peak learning rate of the prior stage.
        prior_warmup_steps: linear warm-up steps of the prior stage.
        train_records: distinct records per stage (the loader cycles over them).
        batch_size: of both stages.
        lr: peak learning rate of the grounding stage.
        warmup_steps: linear warm-up steps of the grounding stage.
        checkpoint_every: steps between resumable Lightning checkpoints.
        seed: of the initialisation and the data order.
        late_stage_seed: the data order of the scenes and prior stages (None: `seed`).
        root: the cache; the model lands in ROOT/ARCH-KEY/model (KEY: a hash of the fields that change the
            model).
        from_shipped: unpack the build shipped in the package (testbed/shipped.py) when it was made from this
            exact config, instead of training.
        ship: after building (or finding) this model, pack it into the package as the shipped build and
            measure its skills on the packed weights.
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
    scene_steps: int = 1000
    scene_families: tuple[str, ...] = (
        "existence",
        "existence",
        "existence",
        "attribute",
        "attribute",
        "describe",
        "count",
    )
    prior_p_color: float | None = 1.0
    prior_uniform_families: tuple[str, ...] = ("existence", "count", "describe")
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
    # The data order of the scenes and prior stages. Their outcome depends on it more than on anything else we
    # tried: from the same grounded model, order 0 gave counter-prior attribute 0.515 and existence 0.835 / 0.82
    # (yes-ratio 0.37), order 1 gave 0.195 and 0.875 / 0.905 (0.45 / 0.54), 200 questions per split.
    late_stage_seed: int | None = 1
    root: str = "runs/base"
    from_shipped: bool = True
    ship: bool = False

    def key(self) -> str:
        """Short hash of the fields that change the model (not where or how it is built): the cache name."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_KEY}
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
    """Train records generated on the fly: record i is fixed by (world seed, i), so epochs repeat exactly.

    `worlds` overrides the world per family (e.g. existence questions on scenes of uniform colours)."""

    def __init__(
        self, world: WorldConfig, size: int, families: tuple[str, ...], worlds: dict[str, WorldConfig] | None = None
    ):
        self.world, self.size, self.families, self.worlds = world, size, families, worlds or {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        family = self.families[i % len(self.families)]
        return make_record(self.worlds.get(family, self.world), "train", i, family)


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


@dataclass
class Stage:
    """One supervised stage of the build: its world, question mix and schedule; its checkpoint is ROOT/name."""

    name: str
    world: WorldConfig
    families: tuple[str, ...]
    steps: int
    lr: float
    warmup: int
    worlds: dict[str, WorldConfig] | None = None  # per-family overrides of `world`
    seed: int = 0  # of the data order


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
    worlds: dict[str, WorldConfig] | None = None,
    seed: int | None = None,
) -> int:
    """Train one stage with Lightning, resuming from `ckpt_dir/last.ckpt`; returns the step resumed from."""
    loader = DataLoader(
        WorldRecords(world, cfg.train_records, families, worlds),
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=SupervisedCollate(processor),
        generator=torch.Generator().manual_seed(cfg.seed if seed is None else seed),
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


def _stages(cfg: WarmStartConfig) -> list[Stage]:
    """The language-model stages after the vision stage, in order (see `WarmStartConfig`)."""
    uniform = cfg.grounding_world()
    scenes = dataclasses.replace(cfg.world, p_color=cfg.grounding_p_color)
    prior = cfg.prior_world()
    late = cfg.seed if cfg.late_stage_seed is None else cfg.late_stage_seed
    return [
        Stage(
            "grounding", uniform, cfg.grounding_families, cfg.grounding_steps, cfg.lr, cfg.warmup_steps, None, cfg.seed
        ),
        Stage("scenes", scenes, cfg.scene_families, cfg.scene_steps, cfg.lr, cfg.prior_warmup_steps, None, late),
        Stage(
            "prior",
            prior,
            cfg.families,
            cfg.steps,
            cfg.prior_lr,
            cfg.prior_warmup_steps,
            {f: dataclasses.replace(prior, p_color=cfg.grounding_p_color) for f in cfg.prior_uniform_families},
            late,
        ),
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
    from mbpo_lit.vlm.policy import ModelConfig, is_vision_parameter, load_policy

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
    start, resumed, seconds = time.time(), {}, {}
    stages, vision = _stages(cfg), root / "vision"
    done = [st for st in stages if (root / st.name / "config.json").is_file()]  # finished in an earlier run
    if cfg.vision_steps > 0 and not (vision / "config.json").is_file() and not done:
        policy = load_policy(ModelConfig(str(init), precision="fp32", quantization="none", lora=None, device="cpu"))
        resumed["vision"], seen = _train_vision(policy, cfg, root / "lightning-vision", progress, callbacks)
        seconds["vision"] = time.time() - start
        _save(policy.model, init, vision, {"vision_skills": seen, "seconds": seconds["vision"]})
    source = root / done[-1].name if done else vision if cfg.vision_steps > 0 else init
    for st in stages[len(done) :]:
        t = time.time()
        policy = load_policy(ModelConfig(str(source), precision="fp32", quantization="none", lora=None, device="cpu"))
        model = policy.model.train()
        frozen = cfg.vision_steps > 0 and cfg.freeze_vision  # the pretrained encoder stays as it is
        for n, prm in model.named_parameters():
            prm.requires_grad_(not (frozen and is_vision_parameter(n, policy.arch)))
        if st.steps > 0:
            resumed[st.name] = _train_stage(
                model,
                policy.processor,
                st.world,
                st.families,
                st.steps,
                st.lr,
                st.warmup,
                cfg,
                root / f"lightning-{st.name}",
                progress,
                callbacks,
                st.worlds,
                st.seed,
            )
        seconds[st.name] = time.time() - t
        source = root / st.name
        _save(model, init, source, {"seconds": seconds[st.name]})
    model.eval()
    table = skills(model, policy.processor, cfg.world, evaluate_n, progress=progress)
    info = {
        "config": dataclasses.asdict(cfg),
        "key": cfg.key(),
        # per stage, this run's seconds or (finished in an earlier run) the seconds it recorded then
        "stage_seconds": {
            name: seconds.get(name) or json.loads((root / name / "warmstart.json").read_text())["seconds"]
            for name in ("vision", *(st.name for st in stages))
            if (root / name / "warmstart.json").is_file() or name in seconds
        },
        "resumed_from_step": resumed,
        **_summary(table, evaluate_n),
    }
    info["train_seconds"] = sum(info["stage_seconds"].values())
    if (vision / "warmstart.json").is_file():  # the vision stage's own report (its heads' held-out skills)
        info["vision_stage"] = json.loads((vision / "warmstart.json").read_text())
    _save(model, init, final, info)
    for name in ("vision", *(st.name for st in stages)):
        shutil.rmtree(root / f"lightning-{name}", ignore_errors=True)
    if cfg.ship:
        ship(final, cfg, evaluate_n, progress)
    return final


def _summary(table: dict, n: int) -> dict:
    """The skills table with the attribute gap up front (what `main` prints)."""
    attribute = table["eval_in_prior"]["attribute"], table["eval_counter_prior"]["attribute"]
    return {
        "eval_records_per_split": n,
        "in_prior_accuracy": attribute[0],
        "counter_prior_accuracy": attribute[1],
        "gap": attribute[0] - attribute[1],
        "skills": table,
    }


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
        **_summary(skills(policy.model.eval(), policy.processor, cfg.world, evaluate_n, progress), evaluate_n),
        "skills_float32": built["skills"],
    }
    (SHIPPED / "warmstart.json").write_text(json.dumps(info, indent=2, default=str))
    shutil.rmtree(check, ignore_errors=True)
    return SHIPPED


SKILL_FAMILIES = ("attribute", "existence", "count", "choice")


def skills(model, processor, world: WorldConfig, n: int = 200, progress: bool = True) -> dict:
    """What the model can do, n questions each: name a lone object's shape and colour (its description, on
    held-out one-object scenes of uniform colours), and per eval split attribute, existence (with its yes-ratio),
    counting and multiple choice. The build prints it as a table and stores it in warmstart.json."""
    from mbpo_lit.evaluation import evaluate_records, greedy_answers
    from mbpo_lit.testbed.questions import build_records, parse_mentions
    from mbpo_lit.testbed.world_source import EVAL_SPLITS

    lone = dataclasses.replace(world, n_objects=1, min_objects=1, max_objects=1, p_color=1 / len(world.colors))
    records = build_records(lone, "train", n, ("describe",), start=10**7)  # far past any training record
    questions, images = [r["question"] for r in records], [r["image"] for r in records]
    preds = greedy_answers(model, processor, questions, images, 32, 24, "one object", progress)
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
