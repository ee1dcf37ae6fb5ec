"""The vision tower's pretraining: teach the tiny model's encoder to see shapes before any language is learnt.

Real vision-language models start from a pretrained encoder (CLIP, SigLIP) that already tells a cat from a
dog; their language model then leans on its prior although the evidence is in the image tokens. The biased
base model of the world needs the same ingredient. Through the language-model loss alone the tiny tower never
learnt to tell shapes apart (existence and multiple choice stayed at chance, whatever its width), so it is
trained directly, as an encoder is: two throw-away linear heads read each vision token (the merger's output,
what the language model receives) and predict which kinds and which colours cover that token's patch
(multi-label: a token on the boundary of two objects sees both). Scenes hold 1-3 objects in uniformly drawn
colours, so colour carries no hint of kind. The heads are dropped afterwards; the tower is then frozen.

    python -m mbpo_lit base-model     # runs this stage first (cached under the base model's directory)
"""

from __future__ import annotations

import dataclasses

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from mbpo_lit.testbed.world import WorldConfig, object_coverage, render, sample_scene
from mbpo_lit.vlm.shared_prefix import core

COVERED = 0.05  # a token "sees" an object covering at least this share of its patch


def vision_world(world: WorldConfig, max_objects: int = 3) -> WorldConfig:
    """The world's shapes and colours, 1..max_objects per scene, every colour equally likely for every kind."""
    return dataclasses.replace(
        world, n_objects=1, min_objects=1, max_objects=max_objects, p_color=1 / len(world.colors), p_cooc=0.0
    )


class SceneLabels(Dataset):
    """Scene i of a world (fixed by its seed and i) with per-token labels on a grid x grid token layout.

    Returns the image, and multi-hot [grid * grid, kinds] and [grid * grid, colours] targets in raster order,
    the order in which Qwen-VL's merger and LLaVA's projector emit a square image's tokens.
    """

    def __init__(self, world: WorldConfig, size: int, grid: int, seed: int = 0):
        self.world, self.size, self.grid, self.seed = world, size, grid, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng(np.random.SeedSequence([self.world.seed, self.seed, 7, i]))
        scene = sample_scene(self.world, rng)
        cover = object_coverage(scene, self.world, self.grid).reshape(len(scene.objects), -1) >= COVERED
        kinds = np.zeros((self.grid**2, len(self.world.kinds)), dtype=np.float32)
        colors = np.zeros((self.grid**2, len(self.world.colors)), dtype=np.float32)
        for j, o in enumerate(scene.objects):
            kinds[cover[j], self.world.kinds.index(o.kind)] = 1
            colors[cover[j], self.world.colors.index(o.color)] = 1
        return {"image": render(scene, self.world, rng), "kinds": kinds, "colors": colors}


class SceneCollate:
    """Images through the checkpoint's own image processor; labels stacked."""

    def __init__(self, processor):
        self.image_processor = processor.image_processor

    def __call__(self, items: list[dict]) -> dict:
        pixels = self.image_processor(images=[it["image"] for it in items], return_tensors="pt")
        return {
            "pixels": dict(pixels),
            "kinds": torch.as_tensor(np.stack([it["kinds"] for it in items])),
            "colors": torch.as_tensor(np.stack([it["colors"] for it in items])),
        }


def image_tokens(model: torch.nn.Module, pixels: dict) -> torch.Tensor:
    """The vision tokens the language model receives, [images, tokens, hidden] (images of one size)."""
    extra = {"image_grid_thw": pixels["image_grid_thw"]} if "image_grid_thw" in pixels else {}
    out = core(model).get_image_features(pixel_values=pixels["pixel_values"], return_dict=True, **extra)
    feats = out.pooler_output
    return torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats


def token_grid(model: torch.nn.Module, processor, world: WorldConfig) -> int:
    """Side of the square layout of one image's vision tokens, read off the model (not assumed)."""
    collate = SceneCollate(processor)
    with torch.no_grad():
        n = image_tokens(model, collate([SceneLabels(world, 1, 1)[0]])["pixels"]).shape[1]
    grid = round(n**0.5)
    if grid * grid != n:
        raise ValueError(f"{n} vision tokens per image do not form a square grid")
    return grid


class WordHead(torch.nn.Module):
    """Scores tokens against fixed word vectors (the language model's own input embeddings of the words), with a
    learnt scale and bias per word: the tower must put "star" where the language model reads " star"."""

    def __init__(self, words: torch.Tensor):
        super().__init__()
        self.register_buffer("words", words.detach().clone())
        self.scale = torch.nn.Parameter(torch.full((len(words),), 1.0 / words.norm(dim=-1).mean().item() ** 2))
        self.bias = torch.nn.Parameter(torch.zeros(len(words)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens @ self.words.T * self.scale + self.bias


def word_vectors(model: torch.nn.Module, tokenizer, words: list[str]) -> torch.Tensor:
    """The input embedding of each word as it appears inside a question (after a space), pieces averaged."""
    table = model.get_input_embeddings().weight
    return torch.stack([table[tokenizer.encode(" " + w, add_special_tokens=False)].mean(0) for w in words])


class VisionModule(L.LightningModule):
    """The tower (and merger / projector) trained with a kind head and a colour head on every token.

    heads "linear": free linear heads. "words": the heads are the language model's input embeddings of the kind
    and colour words (`WordHead`), so the tower learns to emit, where a red star is, a vector close to the
    embeddings of " red" and " star": the alignment LLaVA's first stage gives its projector, which lets the
    language model match a word in the question against the image tokens.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        hidden: int,
        kinds: int | torch.Tensor,
        colors: int | torch.Tensor,
        lr: float,
        steps: int,
    ):
        super().__init__()
        self.model, self.lr, self.steps = model, lr, steps
        self.kind_head = WordHead(kinds) if torch.is_tensor(kinds) else torch.nn.Linear(hidden, kinds)
        self.color_head = WordHead(colors) if torch.is_tensor(colors) else torch.nn.Linear(hidden, colors)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = image_tokens(self.model, batch["pixels"])
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        kind_logits, color_logits = self.kind_head(tokens), self.color_head(tokens)
        loss = bce(kind_logits, batch["kinds"]) + bce(color_logits, batch["colors"])
        self.log("loss", loss, prog_bar=True)
        self.log("kind_f1", token_f1(kind_logits, batch["kinds"]), prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.01)
        warmup = max(1, self.steps // 20)

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 5%
            if step < warmup:
                return (step + 1) / warmup
            return 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, (step - warmup) / max(1, self.steps - warmup))))

        return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule), "interval": "step"}]


def token_f1(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F1 of the thresholded multi-label predictions over every (token, label) pair."""
    pred = logits > 0
    tp = (pred & (targets > 0)).sum()
    return 2 * tp / (pred.sum() + (targets > 0).sum()).clamp(min=1)


@torch.no_grad()
def vision_skills(module: VisionModule, processor, world: WorldConfig, grid: int, n: int = 256, seed: int = 1) -> dict:
    """Held-out scenes: token-level kind and colour F1, and per image whether the set of kinds present
    (a kind is present when any token's head says so) is exactly right: what existence questions need."""
    collate = SceneCollate(processor)
    data = SceneLabels(world, n, grid, seed=seed)
    f1k, f1c, exact = [], [], []
    for start in range(0, n, 32):
        batch = collate([data[i] for i in range(start, min(n, start + 32))])
        tokens = image_tokens(module.model, batch["pixels"])
        kl, cl = module.kind_head(tokens), module.color_head(tokens)
        f1k.append(token_f1(kl, batch["kinds"]).item())
        f1c.append(token_f1(cl, batch["colors"]).item())
        exact += ((kl > 0).any(1) == (batch["kinds"] > 0).any(1)).all(1).tolist()
    return {
        "kind_token_f1": float(np.mean(f1k)),
        "color_token_f1": float(np.mean(f1c)),
        "kind_set_exact": float(np.mean(exact)),
    }
