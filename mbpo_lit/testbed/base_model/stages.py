"""The build's training stages, each a Lightning fit that resumes from its last checkpoint: the vision tower's
pretraining (testbed/vision_stage.py), then supervised stages of the language model on world records
(grounding, scenes, prior; `WarmStartConfig` says why each is there)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mbpo_lit.testbed.base_model.config import WarmStartConfig
from mbpo_lit.testbed.questions import make_record
from mbpo_lit.testbed.world import WorldConfig
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
from mbpo_lit.vlm.logprobs import completion_logprobs


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


def stages(cfg: WarmStartConfig) -> list[Stage]:
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


def trainer(steps: int, cfg: WarmStartConfig, ckpt_dir: Path, progress: bool, callbacks: list | None) -> L.Trainer:
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


def fit(trainer: L.Trainer, module: L.LightningModule, loader: DataLoader, ckpt_dir: Path) -> int:
    """`trainer.fit`, resuming from `ckpt_dir/last.ckpt` if there is one; returns the step resumed from."""
    last = ckpt_dir / "last.ckpt"
    resumed = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    return resumed


def train_stage(
    model: torch.nn.Module,
    processor,
    stage: Stage,
    cfg: WarmStartConfig,
    ckpt_dir: Path,
    progress: bool,
    callbacks: list | None,
) -> int:
    """Train one language-model stage, resuming from `ckpt_dir/last.ckpt`; returns the step resumed from."""
    loader = DataLoader(
        WorldRecords(stage.world, cfg.train_records, stage.families, stage.worlds),
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=SupervisedCollate(processor),
        generator=torch.Generator().manual_seed(cfg.seed if stage.seed is None else stage.seed),
    )
    module = SupervisedModule(model, stage.lr, stage.warmup, stage.steps)
    return fit(trainer(stage.steps, cfg, ckpt_dir, progress, callbacks), module, loader, ckpt_dir)


def train_vision(
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
    resumed = fit(trainer(cfg.vision_steps, cfg, ckpt_dir, progress, callbacks), module, loader, ckpt_dir)
    return resumed, vision_skills(module.eval(), policy.processor, world, grid)


def save_checkpoint(model: torch.nn.Module, init: Path, out: Path, info: dict | None = None) -> None:
    """Save a complete checkpoint (weights + the processor files of `init`) atomically at `out`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("model.safetensors", "config.json", "warmstart.json"))
    model.save_pretrained(tmp)
    if info is not None:
        (tmp / "warmstart.json").write_text(json.dumps(info, indent=2, default=str))
    tmp.rename(out)  # only a finished checkpoint is ever found under the final name


def train_all(
    cfg: WarmStartConfig, root: Path, init: Path, progress: bool, callbacks: list | None
) -> tuple[torch.nn.Module, object, dict, dict]:
    """Every stage from the random checkpoint `init`: the vision stage, then the language-model stages, each kept
    at ROOT/<stage> when it finishes and skipped when an earlier run kept it. Returns the last stage's model, its
    processor, the step each stage resumed from and the seconds each took in this run."""
    from mbpo_lit.vlm.policy import ModelConfig, is_vision_parameter, load_policy

    start, resumed, seconds = time.time(), {}, {}
    plan, vision = stages(cfg), root / "vision"
    done = [st for st in plan if (root / st.name / "config.json").is_file()]  # finished in an earlier run
    if cfg.vision_steps > 0 and not (vision / "config.json").is_file() and not done:
        policy = load_policy(ModelConfig(str(init), precision="fp32", quantization="none", lora=None, device="cpu"))
        resumed["vision"], seen = train_vision(policy, cfg, root / "lightning-vision", progress, callbacks)
        seconds["vision"] = time.time() - start
        save_checkpoint(policy.model, init, vision, {"vision_skills": seen, "seconds": seconds["vision"]})
    source = root / done[-1].name if done else vision if cfg.vision_steps > 0 else init
    if len(done) == len(plan):  # killed after the last stage was kept, before `model/` was written
        policy = load_policy(ModelConfig(str(source), precision="fp32", quantization="none", lora=None, device="cpu"))
        return policy.model, policy.processor, resumed, seconds
    for st in plan[len(done) :]:
        t = time.time()
        policy = load_policy(ModelConfig(str(source), precision="fp32", quantization="none", lora=None, device="cpu"))
        model = policy.model.train()
        frozen = cfg.vision_steps > 0 and cfg.freeze_vision  # the pretrained encoder stays as it is
        for n, prm in model.named_parameters():
            prm.requires_grad_(not (frozen and is_vision_parameter(n, policy.arch)))
        if st.steps > 0:
            resumed[st.name] = train_stage(
                model, policy.processor, st, cfg, root / f"lightning-{st.name}", progress, callbacks
            )
        seconds[st.name] = time.time() - t
        source = root / st.name
        save_checkpoint(model, init, source, {"seconds": seconds[st.name]})
    return model, policy.processor, resumed, seconds
