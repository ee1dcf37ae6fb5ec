"""The settings of the biased base model (`python -m mbpo_lit base-model`; each field is an option)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mbpo_lit.testbed.tiny import TinySpec
from mbpo_lit.testbed.world import WorldConfig

# Where and how a model is built, not what it is: left out of the cache key.
_NOT_IN_KEY = ("root", "checkpoint_every", "from_shipped", "ship")


@dataclass
class WarmStartConfig:
    """Build (or reuse) the biased base model of the embedded world: a tiny checkpoint trained until it leans on
    the language prior.

    Four stages, as real multimodal models are made: the vision tower is pretrained and then frozen (trained
    through the language-model loss alone, the tiny tower does not learn shapes); the language model learns to
    read it where there is no prior to lean on (grounding: few objects, uniform colours; scenes: the world's own
    scenes, uniform colours); then it learns the world with its colour prior (prior). Changing any field that
    shapes the model builds a new one: the cache key is a hash of those fields. The defaults were chosen from the
    builds measured in results/base-model.md.
    """

    arch: Literal["qwen2_5_vl", "qwen2_vl", "llava"] = "qwen2_5_vl"
    """architecture of the tiny checkpoint."""
    world: WorldConfig = field(default_factory=WorldConfig)
    """the world trained on (the embedded one by default: 112 px scenes, three objects, 90% typical colours);
    the prior stage uses it with `prior_p_color`."""
    families: tuple[str, ...] = ("attribute", "attribute", "attribute", "existence", "choice", "count", "describe")
    """question families of the prior stage (repeats weight the mix): attribute questions carry the colour
    prior; the others let the evaluator score POPE, counting, multiple choice and CHAIR on the same model."""
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
    """sizes of the tiny checkpoint (its image size must be the world's)."""
    vision_steps: int = 1200
    """steps of the vision tower's pretraining (testbed/vision_stage.py; 0 skips it); the default was chosen from
    the held-out kind and colour F1 of its per-token heads (results/base-model.md)."""
    vision_lr: float = 2e-3
    """peak learning rate of the vision stage."""
    vision_heads: Literal["linear", "words"] = "words"
    """what the vision stage's per-token heads are: "linear" (free) or "words" (the language model's input
    embeddings of the kind and colour words, aligning the tower to them; it scored higher, results/base-model.md)."""
    freeze_vision: bool = True
    """keep the vision tower (and merger / projector) fixed after the vision stage, as a pretrained encoder is
    kept in LLaVA-style training."""
    grounding_steps: int = 1400
    """steps of the grounding stage."""
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
    """question families of the grounding stage, existence weighted up: it needs the question's word and the
    image together and is the slowest skill to emerge (results/base-model.md)."""
    grounding_p_color: float = 1 / 6
    """probability of typical colours in the grounding stage (1 / len(colors): every colour equally likely, no
    prior to lean on)."""
    grounding_max_objects: int = 3
    """scenes of the grounding stage hold 1..this many objects."""
    scene_steps: int = 1000
    """steps of the scenes stage (the world's scenes at `grounding_p_color`, lr `lr`), where existence and colour
    binding are hardest; what it adds over grounding is in results/base-model.md."""
    scene_families: tuple[str, ...] = (
        "existence",
        "existence",
        "existence",
        "attribute",
        "attribute",
        "describe",
        "count",
    )
    """question families of the scenes stage."""
    prior_p_color: float | None = 1.0
    """probability of typical colours in the prior stage (None: the world's `p_color`). A model that sees this
    well keeps looking unless the prior is total, hence 1.0 (the weaker priors tried: results/base-model.md)."""
    prior_uniform_families: tuple[str, ...] = ("existence", "count", "describe")
    """families of the prior stage asked on scenes at `grounding_p_color` instead, so the prior lives in the
    colour questions only: existence asked at the prior's colours made the colour a shortcut for the kind
    (results/base-model.md)."""
    steps: int = 600
    """steps of the prior stage."""
    prior_lr: float = 1e-3
    """peak learning rate of the prior stage; a gentler prior stage keeps the grounding, where a harsher one
    unlearned looking (results/base-model.md)."""
    prior_warmup_steps: int = 20
    """linear warm-up steps of the prior stage (and of the scenes stage)."""
    train_records: int = 20_000
    """distinct records per stage (the loader cycles over them)."""
    batch_size: int = 32
    """of every stage."""
    lr: float = 1e-3
    """peak learning rate of the grounding and scenes stages."""
    warmup_steps: int = 50
    """linear warm-up steps of the grounding stage."""
    checkpoint_every: int = 200
    """steps between resumable Lightning checkpoints."""
    seed: int = 0
    """of the initialisation and the data order."""
    late_stage_seed: int | None = 1
    """the data order of the scenes and prior stages (None: `seed`). Their outcome depends on it more than on
    anything else tried; the default is the order whose model met the skill bars (results/base-model.md)."""
    root: str = "runs/base"
    """the cache; the model lands in ROOT/ARCH-KEY/model (KEY: a hash of the fields that change the model)."""
    from_shipped: bool = True
    """unpack the build shipped in the package (testbed/shipped.py) when it was made from this exact config,
    instead of training."""
    ship: bool = False
    """after building (or finding) this model, pack it into the package as the shipped build and measure its
    skills on the packed weights."""

    def key(self) -> str:
        """Short hash of the fields that change the model (not where or how it is built): the cache name."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in _NOT_IN_KEY}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def directory(self) -> Path:
        """Where this build lives: ROOT/ARCH-KEY."""
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
