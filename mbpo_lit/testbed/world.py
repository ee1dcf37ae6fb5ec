"""A procedural world of small shape scenes with language priors whose strength we choose: its scenes and how
they are drawn (the questions asked about them are testbed/questions.py).

MBPO targets *modality imbalance*: a model answers from its language prior ("circles are red") instead of
the image. To study that without a 7B model and a real benchmark, a tiny vision-language model is trained
on this world, where the priors are planted on purpose:

* colour prior: each kind of shape has a typical colour, which an object in the train split wears with
  probability `p_color`;
* co-occurrence prior: kinds come in partner pairs, and a scene holding one kind tends (`p_cooc`) to hold
  its partner too, which is what POPE's adversarial negatives exploit;
* popularity: kinds are drawn with a geometric skew (`kind_skew`), so some are more frequent than others,
  which is what POPE's popular negatives exploit.

Several objects per image (3 by default) force the model to bind colour to shape, which is where it starts
leaning on the prior; one object per image left no imbalance (results/base-model.md). A scene is drawn from a
generator the caller seeds, so the records built on it (testbed/questions.py) depend only on (seed, split, i).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

# Far apart in RGB and still bright against the dark background, so colour is never ambiguous.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 220, 40),
    "purple": (160, 60, 200),
    "orange": (250, 140, 20),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
_SS = 4  # supersampling factor: shapes are drawn 4x larger and box-filtered, so 14 px shapes keep their outline


@dataclass
class WorldConfig:
    """Everything that defines the world; the same config and seed always give the same records."""

    image_size: int = 112
    """pixels per side of a scene: 112 px is 4x4 merged Qwen tokens (56 px would be 2x2, too few for three
    objects)."""
    kinds: list[str] = field(
        default_factory=lambda: ["circle", "square", "triangle", "cross", "ring", "diamond", "star", "bar"]
    )
    """the kinds of shape (drawable ones, `SHAPES`); kinds i and i^1 are co-occurrence partners."""
    colors: list[str] = field(default_factory=lambda: ["red", "green", "blue", "yellow", "purple", "orange"])
    """the colours objects wear (each with an RGB value in `palette`); kind i's typical colour is colors[i % n]."""
    n_objects: int = 3
    """objects per scene (unless `min_objects` / `max_objects` give a range)."""
    min_objects: int | None = None
    """scenes hold min..max objects (count questions); None means n_objects."""
    max_objects: int | None = None
    """the most objects in a scene; None means n_objects."""
    p_color: float = 0.9
    """train split: probability that an object wears its kind's typical colour (the colour prior)."""
    p_cooc: float = 0.9
    """per draw, each object after the first is, with this probability, the missing partner of a kind already
    there (if one is missing). With 3 objects one kind is always left unpaired, so the realised P(partner present
    | kind present) is about 2/3 * p_cooc plus chance."""
    kind_skew: float = 0.8
    """kind i is drawn with weight kind_skew**i: makes some kinds "popular" (POPE's popular negatives)."""
    noise: float = 0.08
    """std of the Gaussian pixel noise, pixel values in [0, 1]."""
    clutter: int = 0
    """grey distractor strokes under the objects; grey so that no colour answer changes."""
    background: tuple[int, int, int] = (24, 24, 24)
    """RGB of the background (dark, so every palette colour stands out)."""
    grid: int = 3
    """objects sit in distinct cells of a grid x grid layout, so they never overlap."""
    size_frac: tuple[float, float] = (0.7, 0.95)
    """range of an object's side as a fraction of its cell's side."""
    palette: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(PALETTE))
    """RGB value of each colour name."""
    seed: int = 0
    """of every record: record i of a split depends only on (seed, split, i)."""

    def __post_init__(self) -> None:
        self.min_objects = self.n_objects if self.min_objects is None else self.min_objects
        self.max_objects = self.n_objects if self.max_objects is None else self.max_objects
        words = list(self.kinds) + list(self.colors)
        if len(set(words)) != len(words) or not all(re.fullmatch(r"[a-z]+", w) for w in words):
            raise ValueError(f"kinds and colors must be distinct lowercase single words, got {words}")
        if unknown := [k for k in self.kinds if k not in SHAPES]:
            raise ValueError(f"unknown kinds {unknown}; drawable kinds are {sorted(SHAPES)}")
        if unknown := [c for c in self.colors if c not in self.palette]:
            raise ValueError(f"colors {unknown} have no RGB value in palette")
        if len(self.kinds) < 2 or len(self.colors) < 4:
            raise ValueError("need at least 2 kinds (partners) and 4 colors (multiple choice A-D)")
        if not 1 <= self.min_objects <= self.max_objects <= min(len(self.kinds), self.grid**2):
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= min(len(kinds), grid**2), got "
                f"{self.min_objects}..{self.max_objects}"
            )
        if not (0 <= self.p_color <= 1 and 0 <= self.p_cooc <= 1 and self.kind_skew > 0 and self.seed >= 0):
            raise ValueError("p_color and p_cooc must lie in [0, 1], kind_skew > 0 and seed >= 0")

    def typical_color(self, kind: str) -> str:
        """The colour the prior attaches to `kind`: colors[i % len(colors)] for kind i."""
        return self.colors[self.kinds.index(kind) % len(self.colors)]

    def partner(self, kind: str) -> str:
        """The co-occurrence partner of `kind`: kinds pair up (0-1, 2-3, ...); an odd last kind pairs with kinds[0]."""
        i = self.kinds.index(kind)
        return self.kinds[i ^ 1] if (i ^ 1) < len(self.kinds) else self.kinds[0]


@dataclass
class SceneObject:
    """One shape: what it is, its colour, its grid cell and its pixel box (x, y top-left, side `size`)."""

    kind: str
    color: str
    cell: int
    x: int
    y: int
    size: int

    @property
    def name(self) -> str:
        """The object as words, e.g. "red circle" (the `objects` column and descriptions use it)."""
        return f"{self.color} {self.kind}"


@dataclass
class Scene:
    """The objects of one image in reading order (by cell), and the index of the object a question targets."""

    objects: list[SceneObject]
    query: int = 0

    @property
    def kinds(self) -> list[str]:
        """Kinds present, in reading order (each kind at most once per scene, so questions name objects)."""
        return [o.kind for o in self.objects]


# ----------------------------------------------------------------------------------------------- sampling
def _kind_step(cfg: WorldConfig, present: tuple[str, ...]) -> list[tuple[str, float]]:
    """Distribution of the next kind given those present; sample_scene and kind_frequencies share it."""
    missing = list(dict.fromkeys(cfg.partner(k) for k in present if cfg.partner(k) not in present))
    absent = [(k, cfg.kind_skew**i) for i, k in enumerate(cfg.kinds) if k not in present]
    total = sum(w for _, w in absent)
    p_pair = cfg.p_cooc if missing else 0.0
    out = {k: (1 - p_pair) * w / total for k, w in absent}
    for k in missing:
        out[k] += p_pair / len(missing)
    return list(out.items())


@lru_cache(maxsize=32)
def _frequencies(kinds: tuple[str, ...], lo: int, hi: int, p_cooc: float, skew: float) -> dict[str, float]:
    # Exact marginals by dynamic programming over kind *sets*: the next-kind distribution depends only on
    # the set present, and there are at most 2**len(kinds) sets.
    cfg = WorldConfig(kinds=list(kinds), n_objects=hi, min_objects=lo, p_cooc=p_cooc, kind_skew=skew)
    states: dict[tuple[str, ...], float] = {(): 1.0}
    freq = dict.fromkeys(kinds, 0.0)
    for n in range(1, hi + 1):
        nxt: dict[tuple[str, ...], float] = {}
        for s, p in states.items():
            for k, q in _kind_step(cfg, s):
                t = tuple(sorted(s + (k,)))
                nxt[t] = nxt.get(t, 0.0) + p * q
        states = nxt
        if n >= lo:  # object counts are uniform over lo..hi
            for s, p in states.items():
                for k in s:
                    freq[k] += p / (hi - lo + 1)
    return freq


def kind_frequencies(cfg: WorldConfig) -> dict[str, float]:
    """Exact probability that each kind is in a scene (the same for every split), without sampling noise.

    POPE's "popular" negatives are the most frequent absent objects. Partners co-occur, so the two
    frequencies of a pair are nearly equal; computing them exactly keeps "most popular" well defined.
    """
    return dict(_frequencies(tuple(cfg.kinds), cfg.min_objects, cfg.max_objects, cfg.p_cooc, cfg.kind_skew))


def sample_scene(cfg: WorldConfig, rng: np.random.Generator, follow_prior: bool | None = None) -> Scene:
    """Draw a scene: kinds with the popularity skew and co-occurrence prior, then cells, sizes, colours.

    follow_prior None (train): every object wears its typical colour with probability p_color.
    True / False (eval splits): the queried object does / does not; the others follow the train rule.
    """
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    present: tuple[str, ...] = ()
    for _ in range(n):
        kinds, probs = zip(*_kind_step(cfg, present))
        present += (kinds[rng.choice(len(kinds), p=np.array(probs) / sum(probs))],)
    cells = sorted(int(c) for c in rng.choice(cfg.grid**2, n, replace=False))
    order = rng.permutation(n)  # which kind goes to which cell
    query = int(rng.integers(n))
    edges = [round(j * cfg.image_size / cfg.grid) for j in range(cfg.grid + 1)]
    objects = []
    for j, cell in enumerate(cells):
        kind = present[order[j]]
        r, c = divmod(cell, cfg.grid)
        side = min(edges[c + 1] - edges[c], edges[r + 1] - edges[r])
        size = max(4, round(side * rng.uniform(*cfg.size_frac)))
        x = edges[c] + int(rng.integers(0, side - size + 1))  # jitter inside the cell, never across it
        y = edges[r] + int(rng.integers(0, side - size + 1))
        typical = rng.random() < cfg.p_color if (j != query or follow_prior is None) else follow_prior
        others = [col for col in cfg.colors if col != cfg.typical_color(kind)]
        color = cfg.typical_color(kind) if typical else others[int(rng.integers(len(others)))]
        objects.append(SceneObject(kind, color, cell, x, y, size))
    return Scene(objects, query)


# ---------------------------------------------------------------------------------------------- rendering
def _star(x0: float, y0: float, s: float, points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    cx, cy, r = x0 + s / 2, y0 + s / 2 + s * 0.04, s / 2
    return [
        (
            cx + (r if i % 2 == 0 else r * inner) * math.cos(-math.pi / 2 + i * math.pi / points),
            cy + (r if i % 2 == 0 else r * inner) * math.sin(-math.pi / 2 + i * math.pi / points),
        )
        for i in range(2 * points)
    ]


def _heart(d: ImageDraw.ImageDraw, x: float, y: float, s: float, f: tuple) -> None:
    d.ellipse((x, y + s * 0.05, x + s * 0.55, y + s * 0.6), fill=f)
    d.ellipse((x + s * 0.45, y + s * 0.05, x + s, y + s * 0.6), fill=f)
    d.polygon([(x + s * 0.03, y + s * 0.45), (x + s * 0.97, y + s * 0.45), (x + s / 2, y + s)], fill=f)


# Each drawer fills the square (x, y, x+s, y+s), in supersampled pixels, and never leaves it.
SHAPES = {
    "circle": lambda d, x, y, s, f: d.ellipse((x, y, x + s, y + s), fill=f),
    "square": lambda d, x, y, s, f: d.rectangle((x + s * 0.08, y + s * 0.08, x + s * 0.92, y + s * 0.92), fill=f),
    "triangle": lambda d, x, y, s, f: d.polygon([(x + s / 2, y), (x + s, y + s), (x, y + s)], fill=f),
    "diamond": lambda d, x, y, s, f: d.polygon(
        [(x + s / 2, y), (x + s, y + s / 2), (x + s / 2, y + s), (x, y + s / 2)], fill=f
    ),
    "cross": lambda d, x, y, s, f: (
        d.rectangle((x, y + s * 0.33, x + s, y + s * 0.67), fill=f),
        d.rectangle((x + s * 0.33, y, x + s * 0.67, y + s), fill=f),
    ),
    "ring": lambda d, x, y, s, f: d.ellipse((x, y, x + s, y + s), outline=f, width=max(1, round(s * 0.22))),
    "star": lambda d, x, y, s, f: d.polygon(_star(x, y, s), fill=f),
    "bar": lambda d, x, y, s, f: d.rectangle((x, y + s * 0.32, x + s, y + s * 0.68), fill=f),
    "heart": _heart,
}


def render(scene: Scene, cfg: WorldConfig, rng: np.random.Generator) -> Image.Image:
    """Draw the scene as an RGB image_size x image_size PIL image: clutter, then shapes, then pixel noise."""
    big = cfg.image_size * _SS
    img = Image.new("RGB", (big, big), tuple(cfg.background))
    draw = ImageDraw.Draw(img)
    for _ in range(cfg.clutter):  # under the objects, so shapes stay whole and answers stay exact
        x, y = rng.uniform(0, big, 2)
        ang, length, grey = rng.uniform(0, math.pi), rng.uniform(3, 8) * _SS, int(rng.uniform(70, 150))
        draw.line((x, y, x + length * math.cos(ang), y + length * math.sin(ang)), fill=(grey,) * 3, width=_SS)
    for o in scene.objects:
        SHAPES[o.kind](draw, o.x * _SS, o.y * _SS, o.size * _SS - 1, cfg.palette[o.color])
    img = img.resize((cfg.image_size, cfg.image_size), Image.Resampling.BOX)
    if cfg.noise > 0:
        arr = np.asarray(img, dtype=np.float32) / 255 + rng.normal(0, cfg.noise, (cfg.image_size,) * 2 + (3,))
        img = Image.fromarray(np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8))
    return img


def object_coverage(scene: Scene, cfg: WorldConfig, grid: int) -> np.ndarray:
    """Share of each cell of a grid x grid partition of the image that each object covers: [objects, grid, grid].

    The labels of the vision tower's pretraining (testbed/vision_stage.py): a vision token whose patch an object
    covers should say that object's kind and colour. Drawn with the same shapes and supersampling as `render`.
    """
    big = cfg.image_size * _SS
    out = np.zeros((len(scene.objects), grid, grid), dtype=np.float32)
    for j, o in enumerate(scene.objects):
        mask = Image.new("L", (big, big), 0)
        SHAPES[o.kind](ImageDraw.Draw(mask), o.x * _SS, o.y * _SS, o.size * _SS - 1, 255)
        out[j] = np.asarray(mask.resize((grid, grid), Image.Resampling.BOX), dtype=np.float32) / 255
    return out
