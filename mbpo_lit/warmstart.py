"""The biased base model: a tiny checkpoint trained on the world until it leans on the language prior.

MBPO's claim is that it cures modality imbalance. To show that without a 7B model, we first *make* a model
with the disease: supervised training on the world's train split, where 90% of objects wear their kind's
typical colour. With several objects per image, the model learns that "the circle is red" pays off more
cheaply than binding colours to shapes, and answers counter-prior questions wrongly. The result is a
regular Hugging Face checkpoint directory, cached under `runs/base/` and reused, and is the default base
model of mining and GRPO.

    python -m mbpo_lit.warmstart            # builds (or reuses) it and prints in-prior / counter-prior accuracy

Training is Lightning; an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mbpo_lit.chat import answer_token_ids, append_completions, encode_prompts
from mbpo_lit.logprobs import completion_logprobs
from mbpo_lit.tiny import TinySpec, write_tiny_checkpoint
from mbpo_lit.world import WorldConfig, make_record, world_vocabulary


@dataclass
class WarmStartConfig:
    """How the biased base model is made. Changing any field builds a new model (the cache key is a hash)."""

    arch: str = "qwen2_5_vl"
    world: WorldConfig = field(default_factory=WorldConfig)
    # Attribute questions carry the colour prior; the other families let the evaluator score POPE, counting,
    # multiple choice and CHAIR on the same model. Repeats weight the mix.
    families: tuple[str, ...] = ("attribute", "attribute", "attribute", "existence", "choice", "count", "describe")
    spec: TinySpec = field(default_factory=lambda: TinySpec(
        hidden_size=128, intermediate_size=256, num_heads=4, num_kv_heads=2, vision_hidden_size=64, vocab_size=512))
    train_records: int = 20_000  # distinct records; the loader cycles over them
    steps: int = 2400
    batch_size: int = 32
    lr: float = 2e-3
    warmup_steps: int = 100
    checkpoint_every: int = 200  # steps between resumable Lightning checkpoints
    seed: int = 0
    root: str = "runs/base"

    def key(self) -> str:
        """Short hash of every field but `root`: the cache directory name."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("root", "checkpoint_every")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def directory(self) -> Path:
        return Path(self.root) / f"{self.arch}-{self.key()}"


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
        batch = encode_prompts(p, [r["question"] for r in records], [r["image"] for r in records],
                               record_ids=[r["id"] for r in records])
        batch, mask = append_completions(batch, answer_token_ids(p, [r["answer"] for r in records]),
                                         p.tokenizer.pad_token_id)
        return {"batch": dict(batch), "mask": mask}


class SupervisedModule(L.LightningModule):
    """Plain maximum likelihood of the answers: the warm start that gives the model its prior."""

    def __init__(self, model: torch.nn.Module, lr: float, warmup_steps: int, total_steps: int):
        super().__init__()
        self.model, self.lr, self.warmup, self.total = model, lr, warmup_steps, total_steps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logp = completion_logprobs(self.model, batch["batch"], batch["mask"])
        mask = batch["mask"][:, -logp.shape[1]:]
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


def build_base_model(
    cfg: WarmStartConfig, progress: bool = True, evaluate_n: int = 200, callbacks: list | None = None
) -> Path:
    """Return the directory of the biased base model for `cfg`, training it first if it is not cached.

    The directory is a complete checkpoint (`from_pretrained` loads it); `warmstart.json` beside the weights
    records the config, training time and the in-prior / counter-prior accuracy measured at the end.
    """
    from mbpo_lit.evaluate import evaluate_world
    from mbpo_lit.model import ModelConfig, load_policy

    root = cfg.directory()
    final = root / "model"
    if (final / "warmstart.json").is_file():
        return final
    init = root / "init"
    if not (init / "config.json").is_file():
        write_tiny_checkpoint(cfg.arch, init, cfg.spec, extra_text=world_vocabulary(cfg.world))
    L.seed_everything(cfg.seed, verbose=False)
    policy = load_policy(ModelConfig(str(init), precision="fp32", quantization="none", lora=None, device="cpu"))
    model = policy.model.requires_grad_(True).train()  # the warm start trains every weight, vision tower included
    loader = DataLoader(
        WorldRecords(cfg.world, cfg.train_records, cfg.families), batch_size=cfg.batch_size, shuffle=True,
        collate_fn=SupervisedCollate(policy.processor), generator=torch.Generator().manual_seed(cfg.seed),
    )
    module = SupervisedModule(model, cfg.lr, cfg.warmup_steps, cfg.steps)
    ckpt_dir = root / "lightning"
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=cfg.checkpoint_every,
                                                     save_top_k=0)
    trainer = L.Trainer(
        max_steps=cfg.steps, accelerator="cpu", devices=1, logger=False, callbacks=[checkpoint, *(callbacks or [])],
        enable_progress_bar=progress, enable_model_summary=False, default_root_dir=root, log_every_n_steps=50,
    )
    last = ckpt_dir / "last.ckpt"
    resumed = torch.load(last, map_location="cpu", weights_only=False)["global_step"] if last.is_file() else 0
    start = time.time()
    trainer.fit(module, loader, ckpt_path=str(last) if last.is_file() else None)
    seconds = time.time() - start

    tmp = root / "model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(init, tmp, ignore=shutil.ignore_patterns("model.safetensors", "config.json"))
    model.save_pretrained(tmp)
    results = evaluate_world(model, policy.processor, cfg.world, evaluate_n, families=("attribute",),
                             progress=progress, with_iig=False)["summary"]
    info = {"config": dataclasses.asdict(cfg), "train_seconds": seconds, "resumed_from_step": resumed, "eval_records_per_split": evaluate_n,
            "in_prior_accuracy": results["in_prior_accuracy"],
            "counter_prior_accuracy": results["counter_prior_accuracy"], "gap": results["gap"]}
    (tmp / "warmstart.json").write_text(json.dumps(info, indent=2, default=str))
    tmp.rename(final)  # only a finished, evaluated model is ever found under the final name
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description="Build (or reuse) the biased base model of the embedded world.")
    parser.add_argument("--steps", type=int, default=WarmStartConfig.steps)
    parser.add_argument("--arch", default=WarmStartConfig.arch, choices=["qwen2_5_vl", "qwen2_vl", "llava"])
    parser.add_argument("--p-color", type=float, default=WorldConfig.p_color)
    parser.add_argument("--root", default=WarmStartConfig.root)
    args = parser.parse_args(argv)
    cfg = WarmStartConfig(arch=args.arch, steps=args.steps, root=args.root,
                          world=WorldConfig(p_color=args.p_color))
    path = build_base_model(cfg)
    info = json.loads((path / "warmstart.json").read_text())
    print(f"biased base model: {path}")
    print(f"  trained {info['train_seconds']:.0f} s; attribute accuracy in-prior {info['in_prior_accuracy']:.3f}, "
          f"counter-prior {info['counter_prior_accuracy']:.3f}, gap {info['gap']:.3f} "
          f"({info['eval_records_per_split']} records per split)")


if __name__ == "__main__":
    main()
