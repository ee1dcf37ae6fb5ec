"""The biased base model: a tiny checkpoint trained on the world until it leans on the language prior.

MBPO (Modality-Balancing Preference Optimization, arXiv 2506.08022) is meant to cure modality imbalance: a
model answering from its language prior instead of the image. To show that without a 7B model, we first *make*
a model with the disease: supervised training on the world's train split, where 90% of objects wear their
kind's typical colour. With several objects per image, the model learns that "the circle is red" pays off more
cheaply than binding colours to shapes, and answers counter-prior questions wrongly. The result is a regular
Hugging Face checkpoint directory, cached under `runs/base/` and reused, and is the base model of the embedded
recipe (its mining and GRPO).

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

    Two stages, as real multimodal models are made: first the model learns to *see* (grounding: colour
    questions on one object per image, colours drawn uniformly, so looking is the only way to score), then
    it learns the world with its priors (several objects, typical colours at `world.p_color`, all question
    families). Without the grounding stage the tiny model never learned to look at all (counter-prior
    accuracy 0.00 after 2,400 steps: a blind model, not an imbalanced one). With typical colours at 50% in
    grounding, whether it learned to look depended on the tokenizer and seed (one-object counter-prior
    accuracy 0.56 with one tokenizer, 0.13 with the next); uniform colours gave 0.82.

    Args:
        arch: architecture of the tiny checkpoint.
        world: the world trained on (the embedded one by default: 112 px scenes, three objects, 90% typical
            colours); the prior stage uses it as is.
        families: question families of the prior stage (repeats weight the mix).
        spec: sizes of the tiny checkpoint (its image size must be the world's).
        grounding_steps: steps of the grounding stage (one object per image).
        grounding_families: question families of the grounding stage.
        grounding_p_color: probability of typical colours in the grounding stage (1 / len(colors): every
            colour equally likely, no prior to lean on).
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
            vision_hidden_size=64,
            vocab_size=512,
            image_size=112,
        )
    )
    grounding_steps: int = 400
    # Colour questions only: with existence questions mixed in, 400 steps did not teach the model to look
    # (1-object attribute accuracy 0.22, chance level); colour alone did (0.82 after 300 steps).
    grounding_families: tuple[str, ...] = ("attribute",)
    grounding_p_color: float = 1 / 6
    steps: int = 600
    # A gentler prior stage keeps some of the grounding: 1,200 steps at 2e-3 left counter-prior accuracy at
    # 0.03 (in-prior 1.00), a model that had unlearned to look; see the README for the measured numbers.
    prior_lr: float = 1e-3
    prior_warmup_steps: int = 20
    train_records: int = 20_000
    batch_size: int = 32
    lr: float = 2e-3
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
        """One object per image, so colour binding is trivial and looking pays off at once."""
        return dataclasses.replace(
            self.world, n_objects=1, min_objects=1, max_objects=1, p_color=self.grounding_p_color
        )


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
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=0.01)

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
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=cfg.checkpoint_every
    )
    trainer = L.Trainer(
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
    last = ckpt_dir / "last.ckpt"
    resumed = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    return resumed


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
    from mbpo_lit.testbed.world_source import evaluate_world
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

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
        ("prior", cfg.world, cfg.families, cfg.steps, cfg.prior_lr, cfg.prior_warmup_steps, None),
    ]
    source = grounded if (grounded / "config.json").is_file() else init
    for name, world, families, steps, lr, warmup, out in stages:
        if out is not None and (out / "config.json").is_file():
            continue  # this stage finished in an earlier run
        policy = load_policy(ModelConfig(str(source), precision="fp32", quantization="none", lora=None, device="cpu"))
        model = policy.model.requires_grad_(True).train()  # every weight trains, vision tower included
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
    results = evaluate_world(
        model, policy.processor, cfg.world, evaluate_n, families=("attribute",), progress=progress, with_iig=False
    )["summary"]
    info = {
        "config": dataclasses.asdict(cfg),
        "train_seconds": seconds,
        "resumed_from_step": resumed,
        "eval_records_per_split": evaluate_n,
        "in_prior_accuracy": results["in_prior_accuracy"],
        "counter_prior_accuracy": results["counter_prior_accuracy"],
        "gap": results["gap"],
    }
    _save(model, init, final, info)
    for name, *_ in stages:
        shutil.rmtree(root / f"lightning-{name}", ignore_errors=True)
    return final


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
    return path


if __name__ == "__main__":
    main()
