"""The settings of a mining job (`python -m mbpo_lit mine`; each field is an option, `--epsilon 8`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mbpo_lit.core.attack import METHODS
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.data.sources import RecordSource
from mbpo_lit.vlm.arch import budget_problems


@dataclass
class MineConfig:
    """Mine adversarial hard-negative preference pairs (MBPO's offline data)."""

    model: str
    """base model directory or hub id."""
    source: RecordSource | str
    """the records to mine: a path / hub id in the library's record schema, or a `RecordSource` with options
    (`--source VQAv2 --source.path HuggingFaceM4/VQAv2`, or any class_path)."""
    out: str = "runs/mined"
    """output directory (shards, skipped.jsonl, dataset/, summary.json); a killed job resumes in it."""
    adapter: str | None = None
    """a LoRA adapter (peft format) on top of `model`."""
    revision: str | None = None
    """hub revision (branch, tag or commit) of `model` where it is a hub id: pin it to mine on the weights the fit
    trains (`model.model.revision`)."""
    n: int = 256
    """how many usable source records to mine (the first n the source gives); a source without an `n` of its
    own reads only n records."""
    answer_type: str | None = None
    """answer type of records whose source has none, for a `source` given as a path or hub id ("yes_no",
    "number", "choice", "phrase"; a source's own `answer_type` column wins). It picks the verifier
    (core/answers.py) that decides whether a rejected answer is wrong."""
    method: Literal["pgd", "uniform", "gaussian", "diffusion", "none"] = "pgd"
    """"pgd" (the adversarial attack) or a baseline at the same budget: "uniform", "gaussian", "diffusion",
    "none"."""
    epsilon: float = 32.0
    """L-inf (or L2) budget, in /255 units. The default suits the synthetic world, whose images carry pixel noise
    of std 20/255 that a model learns to ignore (results/mining.md); real 7B models are usually attacked at
    8-16/255 (the 7B recipes)."""
    step_size: float = 4.0
    """PGD step, in /255 units."""
    steps: int = 20
    """most PGD steps per sample."""
    random_start: bool = True
    """start PGD from a uniform point in the ball."""
    norm: Literal["linf", "l2"] = "linf"
    """the ball: "linf" or "l2"."""
    early_stop: bool = True
    """stop a sample once the model's greedy answer, decoded from the 8-bit perturbed image and judged by the
    verifier, is wrong (so "Yes." for ground truth "yes" is still correct)."""
    diffusion_t: int = 200
    """forward-diffusion step of the "diffusion" baseline."""
    decode: Literal["greedy", "sample"] = "greedy"
    """how the rejected answer is decoded: "greedy" or "sample" (temperature 1)."""
    max_new_tokens: int = 16
    """longest rejected answer decoded from the perturbed image."""
    judge_margin: float | None = 0.5
    """with early_stop, a PGD step whose differentiable pass shows the ground truth leading every answer position
    by this many logits counts as still correct without a pass on the 8-bit image, and one where another token
    leads an answer position by as much is decoded without that pass (rounding moves a lead by about a hundredth
    of a logit: results/mining.md); None judges every step on the 8-bit image."""
    iig_filter: Literal["high", "low", "none"] = "high"
    """the IIG rule: keep the "high" or "low" Image Information Gain pairs (by the score `pair_filter` names), or
    "none" (no filter)."""
    iig_fraction: float = 0.5
    """the share of pairs the IIG filter keeps."""
    iig_threshold: float | None = None
    """an IIG cut-off (per-token mean) instead of `iig_fraction`."""
    iig_baseline: Literal["none", "neutral"] = "none"
    """IIG's side without the image: the question alone ("none") or a neutral grey image ("neutral")."""
    pair_filter: Literal["iig", "iig_margin", "prior_conflict"] = "iig"
    """which of the wrong-answer pairs the job keeps. "iig": the IIG rule (`iig_filter`, `iig_fraction`,
    `iig_threshold`) on the chosen answer's Image Information Gain. "iig_margin": the same rule on IIG(chosen) -
    IIG(rejected) (per token), so a pair whose rejected answer the image supports as much ranks low.
    "prior_conflict": of the pairs the IIG rule keeps (`--iig_filter none`: of all), those whose rejected answer
    is the model's answer without visual evidence (`prior_from`) and whose chosen answer is not, by the
    verifier: the pairs that push down what the model says without looking."""
    prior_from: Literal["grey", "no_image", "either"] = "grey"
    """with `pair_filter` "prior_conflict", the model's answer without visual evidence: its greedy answer on a
    uniform grey image of the record's size ("grey", the `answer_grey` column), to the question with no image
    ("no_image", `answer_no_image`), or a pair that conflicts with either ("either")."""
    batch_size: int = 16
    """records per chunk (one shard each, attacked as one batch per image size)."""
    seed: int = 0
    """seed of every random choice, offset per chunk, so a resumed job writes what an uninterrupted one does."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """of the model: "auto" is bf16 on a GPU and fp32 on the CPU."""
    quantization: Literal["none", "4bit", "8bit"] = "none"
    """"4bit" / "8bit" load the model quantized (bitsandbytes), as a 7B model fits a workstation GPU; "none"
    keeps `precision`. PGD needs no trainable weights, only pixel gradients."""
    min_pixels: int | None = None
    """the image budget's floor, in pixels per image (Qwen-VL upscales smaller images to it; None: the
    checkpoint's own). Mine under the budget the fit trains with (`model.model.min_pixels`)."""
    max_pixels: int | None = None
    """the image budget's cap, in pixels per image: Qwen-VL downscales larger images to at most this area, at most
    max_pixels / 784 tokens each (None: the checkpoint's own; the 7B recipes train at 1003520). The attack
    perturbs the resized image, so pairs mined under one budget and trained under another are resized again.
    LLaVA's one image size (336x336) ignores a budget it meets and refuses one it breaks."""
    overwrite: bool = False
    """discard the shards and settings of an earlier job in `out` (with other settings) and start over."""
    bad_records: Literal["skip", "error"] = "skip"
    """unusable source records (empty question, missing answer, unreadable image, ...) are listed with index, id
    and reason in `out/skipped.jsonl` and counted in the summary; "skip" goes on without them, "error" stops
    after listing them all."""


def check(cfg: MineConfig) -> None:
    """Refuse out-of-range settings before any data or model is loaded, naming the option."""
    problems = []
    if cfg.method not in METHODS:
        problems.append(f"--method {cfg.method!r} is not one of {list(METHODS)}")
    if cfg.method in ("pgd", "uniform", "gaussian") and cfg.epsilon <= 0:
        problems.append(f"--epsilon {cfg.epsilon} must be > 0 (in /255 units)")
    if cfg.method == "pgd" and (cfg.step_size <= 0 or cfg.steps < 0):
        problems.append(f"--step_size {cfg.step_size} must be > 0 and --steps {cfg.steps} >= 0")
    if cfg.n < 1 or cfg.batch_size < 1 or cfg.max_new_tokens < 1:
        problems.append(
            f"--n {cfg.n}, --batch_size {cfg.batch_size}, --max_new_tokens {cfg.max_new_tokens} must be >= 1"
        )
    if not 0 < cfg.iig_fraction <= 1:
        problems.append(f"--iig_fraction {cfg.iig_fraction} must be in (0, 1]")
    if cfg.judge_margin is not None and cfg.judge_margin < 0:
        problems.append(f"--judge_margin {cfg.judge_margin} must be >= 0 (or null: judge every step on 8 bits)")
    if cfg.pair_filter not in ("iig", "iig_margin", "prior_conflict"):
        problems.append(f"--pair_filter {cfg.pair_filter!r} is not 'iig', 'iig_margin' or 'prior_conflict'")
    if cfg.prior_from not in ("grey", "no_image", "either"):
        problems.append(f"--prior_from {cfg.prior_from!r} is not 'grey', 'no_image' or 'either'")
    if cfg.bad_records not in ("skip", "error"):
        problems.append(f"--bad_records {cfg.bad_records!r} is not 'skip' or 'error'")
    problems += budget_problems(cfg.min_pixels, cfg.max_pixels, cli=True)
    if problems:
        raise SettingsError("; ".join(problems))


def settings_json(cfg: MineConfig) -> str:
    """The job's settings as JSON (a source as its class and options), to refuse mixing two jobs in one --out."""

    def plain(o):
        return {"class": type(o).__name__, **vars(o)} if isinstance(o, RecordSource) else str(o)

    # `overwrite` is how to start over, not a property of the job's data. An unset image budget or revision and the
    # default pair filter are left out, so a job started before they existed resumes as it was.
    unset = {"min_pixels": None, "max_pixels": None, "pair_filter": "iig", "prior_from": "grey", "revision": None}
    settings = {
        k: v for k, v in dataclasses.asdict(cfg).items() if k != "overwrite" and not (k in unset and v == unset[k])
    }
    return json.dumps(settings, sort_keys=True, default=plain)


def mining_folder(pairs_path: str) -> Path:
    """The `--out` folder of the mining job behind `data.pairs` (given as that folder or its `dataset/`)."""
    path = Path(pairs_path)
    return path.parent if path.name == "dataset" and not (path / "config.json").is_file() else path


def budget_mismatch(folder: str | Path, budget: dict[str, int]) -> str | None:
    """How the image budget the pairs in a mining output `folder` were mined under (its summary.json) differs
    from `budget` (`vlm.arch.pixel_budget` of the processor in use), in one line; None when the same, or when the
    folder records none (mined before the budget was recorded)."""
    summary = Path(folder) / "summary.json"
    saved = json.loads(summary.read_text()) if summary.is_file() else {}
    mined = {k: saved[k] for k in ("min_pixels", "max_pixels") if k in saved}
    if not mined or mined == {k: budget[k] for k in mined}:
        return None
    return (
        f"the pairs in {folder} were mined under the image budget {mined}, this model's processor applies {budget}: "
        f"their images are resized again (set min_pixels / max_pixels as the mining did, or mine again)"
    )
