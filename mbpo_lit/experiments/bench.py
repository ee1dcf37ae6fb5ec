"""`python -m mbpo_lit bench`: how fast the hot paths run, in numbers (a benchmark command, not a test).

1. The hybrid GRPO step, three ways on the same settings (checkpoint, prompts and images, G, lengths, beta,
   loss aggregation, LoRA, quantization):
   - mbpo_lit as shipped (`MBPOModule.training_step` under a real Lightning Trainer, `share_prefix=True`: each
     distinct image encoded once per step, each prompt prefilled once for its completions; vlm/shared_prefix.py);
   - mbpo_lit "rowwise" (`share_prefix=False`: one row per completion, every pass from pixels);
   - TRL's GRPOTrainer (when `trl` is installed: `pip install mbpo_lit[bench]`; `--trl false` skips it).
   For each: wall time per optimizer step (median and spread of `steps` steps after `warmup` unmeasured ones),
   samples/s, generated tokens/s, peak memory, and the vision tower's calls and images encoded per step (a forward
   hook on the architecture's vision module). Each side runs in its own process, so the peak memory is its own.
   `trl_unmatched` lists what could not be set the same on the TRL side.
2. PGD mining: images/s, and its time relative to the bare forward+backward of the same number of steps on the
   same batch (PGD adds the projection, the codec and the greedy-match flag on top of that).
3. Mining on real image sizes: `Miner.mine` on scikit-image's sample photographs (thumbnailed to 160 px, several
   sizes), each size group attacked as one batch as the miner does, against one image at a time; and the
   ceiling of batching on the machine: the same photographs at one size, one batch against one at a time.
4. Padding: the share of prompt tokens that are padding in batches of mixed image sizes, drawn plainly and
   with length grouping (`HybridDataModule(length_group_batches=...)`).

Results print as a table with the ratios and go to `--out` as JSON.

    python -m mbpo_lit bench --group_size 8 --steps 5
    python -m mbpo_lit bench --size small --precision bf16 --out runs/bench/gpu.json
    python -m mbpo_lit bench --gradient_checkpointing true --trl false   # as the 7B recipes train
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from mbpo_lit.vlm.arch import arch_of
from mbpo_lit.vlm.policy import LoraSettings

BENCH_LORA = LoraSettings(r=8, alpha=16)  # both GRPO sides' adapters (dropout 0.05, the architecture's targets)


@dataclass
class BenchConfig:
    """Settings shared by every measured path (each is a command-line option).

    Args:
        model: a checkpoint directory; None writes a random one of `size` under runs/checkpoints.
        arch: the checkpoint's architecture.
        size: of the random checkpoint: "tiny" (CPU) or "small" (a 1024-wide, 8-layer LM with a 448-px vision
            tower, for GPUs).
        quantization: of the policy's frozen base weights.
        precision: of the policy (bf16 for GPU runs).
        group_size: G, completions per online prompt.
        prompts: online prompts per step (no offline pairs: TRL's GRPOTrainer has none).
        max_new_tokens: longest completion.
        beta: KL weight (> 0: the reference pass is timed too).
        mu: optimisation passes over one rollout.
        steps: measured steps, after `warmup` unmeasured ones.
        warmup: unmeasured steps first.
        pgd_steps: PGD steps of the mining measurements.
        pgd_images: images attacked together (world images; and photographs in the mixed-size measurement).
        trl: run TRL's GRPOTrainer on the same settings when `trl` is installed (false: skip it).
        gradient_checkpointing: recompute the language model's activations in the backward, on every GRPO
            side (as the 7B recipes do): the shared prefix then prefills each prompt once through checkpointed
            layers, the rowwise side checkpoints one row per completion.
        sections: the measurements to run (a sweep over G or sizes wants only "grpo"); a skipped one reports
            "skipped".
        image_size: side of the random checkpoint's images in pixels (None: the size's own, 112 tiny, 448
            small); it sets the prompt length (Qwen-VL: (image_size / 28)^2 image tokens per prompt).
        trl_lora_dtype: "match" casts the LoRA weights that TRL turns to bf16 on a quantized model back to the
            dtype mbpo_lit trains them in (fp32); "trl" keeps TRL's bf16 (then listed as unmatched).
        out: the results as JSON.
    """

    model: str | None = None
    arch: Literal["qwen2_5_vl", "qwen2_vl", "llava"] = "qwen2_5_vl"
    size: Literal["tiny", "small"] = "tiny"
    quantization: Literal["4bit", "8bit", "none"] = "4bit"
    precision: Literal["bf16", "fp16", "fp32"] = "fp32"
    group_size: int = 8
    prompts: int = 4
    max_new_tokens: int = 8
    beta: float = 0.04
    mu: int = 1
    steps: int = 5
    warmup: int = 1
    pgd_steps: int = 10
    pgd_images: int = 8
    trl: bool = True
    gradient_checkpointing: bool = False
    trl_lora_dtype: Literal["match", "trl"] = "match"
    sections: tuple[Literal["grpo", "pgd", "mine_sizes", "padding"], ...] = ("grpo", "pgd", "mine_sizes", "padding")
    image_size: int | None = None
    out: str = "runs/bench/bench.json"


class _StepTimer(L.Callback):
    """Wall time of each training batch (the caller drops the first `warmup`)."""

    def __init__(self):
        self.times: list[float] = []

    def on_train_batch_start(self, *args):
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.times.append(time.perf_counter() - self._t)


def count_vision_calls(model: torch.nn.Module, arch: str) -> dict[str, int]:
    """Install a forward hook on the vision module; returns the counters it increments: "calls" and
    "images" (images encoded: rows of Qwen's grid_thw, or the batch size of LLaVA's pixel_values)."""
    name = arch_of(arch).vision_modules[0]
    vision = next(m for n, m in model.named_modules() if n.split(".")[-1] == name)
    counts = {"calls": 0, "images": 0}

    def hook(module, args, kwargs, output):
        grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
        pixels = args[0] if args else kwargs.get("pixel_values", kwargs.get("hidden_states"))
        counts["calls"] += 1
        counts["images"] += int(grid.shape[0]) if grid is not None else int(pixels.shape[0])

    vision.register_forward_hook(hook, with_kwargs=True)
    return counts


def step_stats(times: list[float], warmup: int) -> dict:
    """Median and spread (min, max) of the step times after the first `warmup`, and the times themselves."""
    measured = times[warmup:]
    if not measured:
        raise ValueError(f"no measured step: {len(times)} steps ran, {warmup} of them warm-up")
    return {
        "step_s": statistics.median(measured),
        "step_s_min": min(measured),
        "step_s_max": max(measured),
        "steps_measured": len(measured),
        "step_times_s": measured,
    }


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated, or the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_mbpo(cfg: BenchConfig, path: str, share_prefix: bool = True) -> dict:
    """Time `cfg.steps` hybrid GRPO steps of MBPOModule on online prompts of the embedded world."""
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.train.module import MBPOModule
    from mbpo_lit.train.settings import Loss, Rewards, Sampling
    from mbpo_lit.vlm.policy import ModelConfig

    online = WorldSource(["train"], 256)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module = MBPOModule(
        ModelConfig(
            path,
            precision=cfg.precision,
            quantization=cfg.quantization,
            lora=BENCH_LORA,
            device=device,
            gradient_checkpointing=cfg.gradient_checkpointing,
        ),
        sampling=Sampling(group_size=cfg.group_size, max_new_tokens=cfg.max_new_tokens),
        loss=Loss(beta=cfg.beta, mu=cfg.mu),
        rewards=Rewards(vocabulary=online.vocabulary),
        sample_table_every=0,
        evaluate_after_fit=False,
        share_prefix=share_prefix,
    )
    data = HybridDataModule(
        pairs=None, online=online, val=None, online_per_batch=cfg.prompts, batches_per_epoch=cfg.warmup + cfg.steps
    )
    module.configure_model()
    calls, tokens = count_vision_calls(module.model, cfg.arch), [0]
    rollout = module.rollout

    def counted_rollout(*args):
        out = rollout(*args)
        tokens[0] += sum(len(c) for c in out[1])
        return out

    module.rollout = counted_rollout
    timer = _StepTimer()
    with tempfile.TemporaryDirectory() as root:  # fit's end exports the adapters under default_root_dir
        trainer = L.Trainer(
            max_steps=(cfg.warmup + cfg.steps) * cfg.mu,
            logger=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
            default_root_dir=root,
        )
        trainer.fit(module, data)
    stats = step_stats(timer.times, cfg.warmup)
    out = _step_results(cfg, stats, tokens[0], calls, peak_memory_mb(module.device))
    return out | {"gradient_checkpointing": module.model.get_base_model().is_gradient_checkpointing}


def _step_results(cfg: BenchConfig, stats: dict, tokens: int, calls: dict, peak_mb: float) -> dict:
    """One GRPO side's numbers: `stats` (step_stats) plus throughput, vision-tower counts per step, memory."""
    total, per_step = cfg.warmup + cfg.steps, stats["step_s"]
    return {
        **stats,
        "samples_per_s": cfg.prompts * cfg.group_size / per_step,
        "generated_tokens_per_s": tokens / total / per_step,
        "vision_calls_per_step": calls["calls"] / total,
        "images_encoded_per_step": calls["images"] / total,
        "distinct_images_per_step": cfg.prompts,
        "peak_memory_mb": peak_mb,
    }


TRL_MISSING = "unavailable: pip install mbpo_lit[bench]"

# What the TRL side cannot set as mbpo_lit has it (the settings that it does match are in `_trl_config`).
TRL_UNMATCHED = [
    "rollout: TRL generates with transformers' `generate` on G copies of each prompt (one row per completion); "
    "mbpo_lit prefills each prompt once and samples its G completions from the repeated cache: the same sampling "
    "rule (temperature, top-k, top-p, the vision tokens suppressed, every end id), different random draws",
    "prompts are tokenized and their images preprocessed twice per step by TRL (once for generation, once for "
    "the loss passes), once by mbpo_lit",
    "TRL reads its prompts from a datasets.Dataset (images stored as PNG, decoded on access); mbpo_lit from "
    "decoded images in memory",
    "TRL logs its own metrics every step (entropy, clip ratios, completion lengths; a gather per metric)",
    "mu > 1: TRL makes each of the mu passes its own trainer step; both sides time one rollout and its mu "
    "optimizer steps",
]


def trl_available() -> bool:
    """Whether `trl` can be imported (without importing it)."""
    return importlib.util.find_spec("trl") is not None


def bench_trl(cfg: BenchConfig, path: str) -> dict:
    """TRL's GRPOTrainer on the same settings, in its own process; "unavailable" without `trl` or with
    `--trl false`."""
    if not cfg.trl:
        return {"unavailable": "skipped (--trl false)"}
    if not trl_available():
        return {"unavailable": TRL_MISSING}
    return _isolated(_bench_trl, cfg, path)


def _trl_config(cfg: BenchConfig, out_dir: str, suppress: list[int]):
    """GRPOConfig for one optimizer step per rollout of `cfg.prompts` x G completions, in one micro-batch,
    with mbpo_lit's defaults where TRL's differ (loss "grpo", fp32 LoRA, AdamW at 1e-4 without schedule,
    gradient checkpointing as `cfg.gradient_checkpointing` (non-reentrant, as mbpo_lit's), no mixed precision:
    the weights' own dtype, as mbpo_lit)."""
    from trl import GRPOConfig

    from mbpo_lit.train.settings import Loss, Optimization, Sampling

    loss, sampling, optim = Loss(beta=cfg.beta, mu=cfg.mu), Sampling(group_size=cfg.group_size), Optimization()
    rows = cfg.prompts * cfg.group_size
    return GRPOConfig(
        output_dir=out_dir,
        max_steps=(cfg.warmup + cfg.steps) * cfg.mu,
        per_device_train_batch_size=rows,
        gradient_accumulation_steps=optim.accumulate_grad_batches,
        generation_batch_size=rows,
        num_generations=cfg.group_size,
        num_iterations=cfg.mu,
        max_completion_length=cfg.max_new_tokens,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repetition_penalty=1.0,
        generation_kwargs={"suppress_tokens": suppress},
        beta=cfg.beta,
        epsilon=loss.eps_low,
        epsilon_high=loss.eps_high,
        loss_type=loss.aggregation,
        scale_rewards="group" if loss.divides_by_std else "none",
        mask_truncated_completions=False,
        learning_rate=optim.lr,
        weight_decay=optim.weight_decay,
        max_grad_norm=optim.max_grad_norm,
        lr_scheduler_type="constant",
        optim="adamw_torch",
        gradient_checkpointing=cfg.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if cfg.gradient_checkpointing else None,
        bf16=False,
        fp16=False,
        shuffle_dataset=False,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,  # as mbpo_lit's DataLoader
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        log_completions=False,
        disable_tqdm=True,
        seed=0,
    )


def _bench_trl(cfg: BenchConfig, path: str) -> dict:
    """The TRL side: GRPOTrainer on the base model mbpo_lit loads (same quantization and precision), with the
    same LoRA config, the same per-step prompts and images (batch i of the same HybridDataModule), and
    mbpo_lit's composed online reward (accuracy + format + length penalty, the same weights)."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    from mbpo_lit.core.rewards import AccuracyReward, FormatReward, LengthPenalty
    from mbpo_lit.data.hybrid import HybridDataModule
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.train.settings import Rewards
    from mbpo_lit.vlm.chat import vision_token_ids
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    online = WorldSource(["train"], 256)
    total = cfg.warmup + cfg.steps
    data = HybridDataModule(pairs=None, online=online, val=None, online_per_batch=cfg.prompts, batches_per_epoch=total)
    data.setup()
    records = [r for i in range(total) for r in data.train_set[i]["online"]]
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": r["question"]}],
                "image": r["image"],
                "answer": r["answer"],
                "answer_type": r["answer_type"],
                "choices": list(r.get("choices") or []),
            }
            for r in records
        ]
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    lora = BENCH_LORA
    policy = load_policy(
        ModelConfig(path, precision=cfg.precision, quantization=cfg.quantization, lora=None, device=device)
    )
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=policy.arch.lora_target_regex(lora.targets),
        task_type="CAUSAL_LM",
    )
    settings, vocabulary, tokens = Rewards(vocabulary=online.vocabulary), online.vocabulary, [0]

    def as_reward(fn, name: str, count_tokens: bool = False):
        def reward(prompts, completions, completion_ids, answer, answer_type, choices, **kwargs):
            if count_tokens:
                tokens[0] += sum(len(c) for c in completion_ids)
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            recs = [
                {"answer": a, "answer_type": t, "choices": c}
                for a, t, c in zip(answer, answer_type, choices, strict=True)
            ]
            return fn(texts, recs)

        reward.__name__ = name
        return reward

    rewards = [
        as_reward(AccuracyReward(vocabulary), "accuracy", count_tokens=True),
        as_reward(FormatReward(vocabulary=vocabulary), "format"),
        as_reward(LengthPenalty(coef=settings.length_coef), "length"),
    ]
    with tempfile.TemporaryDirectory() as out_dir:
        args = _trl_config(cfg, out_dir, vision_token_ids(policy.processor))
        args.reward_weights = [1.0, settings.format_weight, 1.0]
        timer = _TrlStepTimer(TrainerCallback)
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=rewards,
            args=args,
            train_dataset=dataset,
            processing_class=policy.processor,
            peft_config=peft_config,
            callbacks=[timer],
        )
        lora_dtypes = {str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}
        if cfg.trl_lora_dtype == "match":  # mbpo_lit's LoRA weights are fp32 (peft's default), on any base
            for p in trainer.model.parameters():
                if p.requires_grad:
                    p.data = p.data.to(torch.float32)
        trainer.remove_callback(PrinterCallback)  # the step logs, printed when tqdm is off
        calls = count_vision_calls(trainer.model, cfg.arch)
        trainer.train()
    unmatched = list(TRL_UNMATCHED)
    if cfg.trl_lora_dtype == "trl" and lora_dtypes != {"torch.float32"}:
        unmatched.append(
            f"LoRA weights in {', '.join(sorted(lora_dtypes))} (TRL's cast on a quantized model); mbpo_lit's are fp32"
        )
    stats = step_stats([sum(timer.times[i : i + cfg.mu]) for i in range(0, len(timer.times), cfg.mu)], cfg.warmup)
    return {
        **_step_results(cfg, stats, tokens[0], calls, peak_memory_mb(torch.device(device))),
        "trl_version": trl.__version__,
        "lora_dtype_from_trl": sorted(lora_dtypes),
        "lora_dtype_trained": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}),
        "trl_unmatched": unmatched,
    }


def _TrlStepTimer(base):
    """A transformers TrainerCallback timing each optimizer step (generation, loss passes, backward, step)."""

    class StepTimer(base):
        def __init__(self):
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self._t)

    return StepTimer()


def bench_pgd(cfg: BenchConfig, path: str) -> dict:
    """PGD images/s and its time over the bare forward+backward of the same steps on the same batch."""
    from mbpo_lit.core.attack import pgd
    from mbpo_lit.mining import MineConfig, Miner
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts
    from mbpo_lit.vlm.logprobs import completion_logprobs
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    source = WorldSource(["train"], cfg.pgd_images)
    policy = load_policy(ModelConfig(path, precision=cfg.precision, quantization="none", lora=None))
    mine_cfg = MineConfig(model=path, source=source, n=cfg.pgd_images, steps=cfg.pgd_steps, early_stop=False)
    miner = Miner(policy.model, policy.processor, mine_cfg, source.vocabulary)
    records, _ = source.load()
    prompts = encode_prompts(policy.processor, [r["question"] for r in records], [r["image"] for r in records])
    ids = answer_token_ids(policy.processor, [r["answer"] for r in records])
    clean = torch.stack(miner.codec.raw_images(prompts)).to(miner.device)
    objective = miner.objective(prompts, ids)
    batch, mask = append_completions(prompts, ids, policy.processor.tokenizer.pad_token_id)
    pixels = batch["pixel_values"].clone().requires_grad_(True)

    def attack():
        pgd(objective, clean, 32 / 255, 4 / 255, cfg.pgd_steps, True, "linf", False)

    def bare():
        for _ in range(cfg.pgd_steps):
            completion_logprobs(policy.model, dict(batch, pixel_values=pixels), mask).sum().backward()

    def seconds(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    # One untimed step warms up the kernels and allocator; then each is timed three times, interleaved, best kept,
    # so that neither side pays for the other's warm-up or for a burst of background load.
    completion_logprobs(policy.model, dict(batch, pixel_values=pixels), mask).sum().backward()
    times = [(seconds(attack), seconds(bare)) for _ in range(3)]
    pgd_s, bare_s = min(t[0] for t in times), min(t[1] for t in times)
    return {
        "images_per_s": cfg.pgd_images / pgd_s,
        "pgd_s": pgd_s,
        "bare_forward_backward_s": bare_s,
        "overhead_ratio": pgd_s / bare_s,
    }


# scikit-image's sample photographs (no download: they ship with the package) and a yes/no question each.
PHOTOS = {
    "astronaut": ("Is there a person in the image?", "yes"),
    "coffee": ("Is there a cup in the image?", "yes"),
    "chelsea": ("Is there a dog in the image?", "no"),
    "rocket": ("Is there a rocket in the image?", "yes"),
    "hubble_deep_field": ("Is there a car in the image?", "no"),
    "immunohistochemistry": ("Is there a cat in the image?", "no"),
}


def photo_records(n: int, size: int = 160) -> list[dict]:
    """n records cycling through `PHOTOS`, each thumbnailed to fit `size` px (so of several sizes:
    160x160, 160x107, 160x106, 160x140)."""
    from PIL import Image
    from skimage import data

    images = {}
    for name in PHOTOS:
        im = Image.fromarray(getattr(data, name)()).convert("RGB")
        im.thumbnail((size, size))
        images[name] = im
    names = list(PHOTOS)
    return [
        {
            "id": f"{names[i % len(names)]}-{i}",
            "image": images[names[i % len(names)]],
            "question": PHOTOS[names[i % len(names)]][0],
            "answer": PHOTOS[names[i % len(names)]][1],
            "answer_type": "yes_no",
        }
        for i in range(n)
    ]


def bench_mine_sizes(cfg: BenchConfig, path: str) -> dict:
    """Mining throughput on photographs of mixed sizes: `Miner.mine` on `cfg.pgd_images` of them (each size
    group attacked as one batch, as the miner does) against the same records one at a time (batches of 1).

    The whole of `Miner.mine` is timed (PGD with `cfg.pgd_steps` steps and no early stop, so both ways do the
    same steps; the clean and perturbed answers; IIG). The processor keeps each image's resolution within
    56x56-280x280 px, as the 7B Qwen-VL processors do, so the sizes reach the vision tower."""
    from mbpo_lit.mining import MineConfig, Miner
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    records = photo_records(cfg.pgd_images)
    policy = load_policy(ModelConfig(path, precision=cfg.precision, quantization="none", lora=None))
    if hasattr(policy.processor.image_processor, "merge_size"):
        policy.processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 280 * 280}
    mine_cfg = MineConfig(
        model=path, source="photos", n=len(records), steps=cfg.pgd_steps, early_stop=False, iig_filter="none"
    )
    miner = Miner(policy.model, policy.processor, mine_cfg, None)
    sizes = sorted({r["image"].size for r in records})

    def seconds(fn) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def grouped():
        miner.mine(records, 0)

    def one_at_a_time():
        for i, r in enumerate(records):
            miner.mine([r], i)

    # The ceiling of batching on this machine: the same photographs all at one size (one group, one batch)
    # against those one at a time. Grouping by size cannot beat it.
    square = [dict(r, image=r["image"].resize((160, 160))) for r in records]

    def one_size():
        miner.mine(square, 0)

    def one_size_one_at_a_time():
        for i, r in enumerate(square):
            miner.mine([r], i)

    miner.mine(records[:1], 0)  # warm-up
    # Interleaved, best of two each, as in bench_pgd.
    fns = (grouped, one_at_a_time, one_size, one_size_one_at_a_time)
    times = [[seconds(fn) for fn in fns] for _ in range(2)]
    grouped_s, single_s, same_s, same_single_s = (min(t[i] for t in times) for i in range(4))
    return {
        "images": len(records),
        "image_sizes": [f"{w}x{h}" for w, h in sizes],
        "size_groups": len(sizes),
        "grouped_images_per_s": len(records) / grouped_s,
        "one_at_a_time_images_per_s": len(records) / single_s,
        "grouped_vs_one_at_a_time_speedup": single_s / grouped_s,
        "one_size_batched_vs_one_at_a_time_speedup": same_single_s / same_s,
    }


def bench_padding(cfg: BenchConfig, path: str, batches: int = 32, group: int = 16) -> dict:
    """Share of prompt tokens that are padding, in batches of `cfg.prompts` world prompts whose images come
    in four sizes (112-280 px, as a dataset of mixed resolutions), drawn plainly and length-grouped."""
    from mbpo_lit.data.hybrid import HybridBatches
    from mbpo_lit.testbed.questions import build_records
    from mbpo_lit.testbed.world import WorldConfig
    from mbpo_lit.vlm.arch import load_processor
    from mbpo_lit.vlm.chat import encode_prompts

    processor = load_processor(path, cfg.arch)
    sizes = (112, 168, 224, 280)
    if hasattr(processor.image_processor, "merge_size"):  # Qwen-VL: keep each image's resolution, as the 7B
        processor.image_processor.size = {"shortest_edge": 56 * 56, "longest_edge": 280 * 280}  # processors do
    records = [
        dict(r, image=r["image"].resize((sizes[i % 4],) * 2))
        for i, r in enumerate(build_records(WorldConfig(), "train", 256))
    ]
    out = {}
    for name, m in (("plain", 1), ("length_grouped", group)):
        data = HybridBatches([], records, 0, cfg.prompts, batches, seed=0, group_batches=m)
        pad = total = 0
        for i in range(batches):
            online = data[i]["online"]
            questions, images = [r["question"] for r in online], [r["image"] for r in online]
            mask = encode_prompts(processor, questions, images)["attention_mask"]
            pad, total = pad + int((mask == 0).sum()), total + mask.numel()
        out[f"{name}_padding_fraction"] = pad / total
    return out


def _isolated(fn, *args) -> dict:
    """`fn(*args)` in a fresh process, so that its peak memory (RSS on the CPU) is its own."""
    if torch.cuda.is_available():  # CUDA keeps its own peak counter; no fork after CUDA initialisation
        torch.cuda.reset_peak_memory_stats()
        return fn(*args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def ratios(results: dict) -> dict:
    """The headline numbers as ratios: step time against the rowwise layout and TRL, vision-tower encodings
    per distinct image, PGD's overhead, mixed-size mining grouped against one at a time, padding saved by
    length grouping (a side that did not run gives "unavailable"; a skipped section, no ratio)."""
    fast, rowwise, trl, pad = results["mbpo_lit"], results["rowwise"], results["trl"], results["padding"]
    out = {}
    if "step_s" in fast:
        out |= {
            "step_time_vs_rowwise": fast["step_s"] / rowwise["step_s"],
            "step_time_vs_trl": fast["step_s"] / trl["step_s"] if "step_s" in trl else "unavailable",
            "rowwise_step_time_vs_trl": rowwise["step_s"] / trl["step_s"] if "step_s" in trl else "unavailable",
            "images_encoded_per_distinct_image": fast["images_encoded_per_step"] / fast["distinct_images_per_step"],
            "rowwise_images_encoded_per_distinct_image": rowwise["images_encoded_per_step"]
            / rowwise["distinct_images_per_step"],
            "trl_images_encoded_per_distinct_image": (
                trl["images_encoded_per_step"] / trl["distinct_images_per_step"] if "step_s" in trl else "unavailable"
            ),
        }
    if "overhead_ratio" in results["pgd"]:
        out["pgd_overhead_vs_bare_forward_backward"] = results["pgd"]["overhead_ratio"]
    if "grouped_vs_one_at_a_time_speedup" in results["mine_sizes"]:
        out["mining_mixed_sizes_grouped_vs_one_at_a_time"] = results["mine_sizes"]["grouped_vs_one_at_a_time_speedup"]
    if "plain_padding_fraction" in pad:
        out["padding_length_grouped_vs_plain"] = (
            pad["length_grouped_padding_fraction"] / pad["plain_padding_fraction"]
            if pad["plain_padding_fraction"]
            else "no padding (one prompt per batch?)"
        )
    return out


def checkpoint(cfg: BenchConfig) -> str:
    """`cfg.model`, or a random checkpoint of `cfg.size` written (once) under runs/checkpoints."""
    if cfg.model is not None:
        return cfg.model
    from mbpo_lit.testbed.tiny import TinySpec, ensure_tiny_checkpoint

    sizes = {
        "tiny": ("runs/checkpoints/bench", TinySpec(image_size=112)),
        "small": (
            "runs/checkpoints/bench-small",
            TinySpec(
                hidden_size=1024,
                intermediate_size=2816,
                num_layers=8,
                num_heads=16,
                num_kv_heads=4,
                vision_hidden_size=512,
                vision_layers=8,
                image_size=448,
            ),
        ),
    }
    if cfg.size not in sizes:
        raise ValueError(f"size={cfg.size!r} is not one of {list(sizes)}")
    root, spec = sizes[cfg.size]
    if cfg.image_size is not None and cfg.image_size != spec.image_size:
        if cfg.image_size % 28:
            raise ValueError(f"image_size={cfg.image_size} must be a multiple of 28 (2x2 merged patches of 14 px)")
        root, spec = f"{root}-{cfg.image_size}px", replace(spec, image_size=cfg.image_size)
    return str(ensure_tiny_checkpoint(cfg.arch, root, spec))


def prompt_tokens(cfg: BenchConfig, path: str) -> int:
    """Tokens of one online prompt (chat template, question and image tokens) as both GRPO sides encode it."""
    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.vlm.arch import load_processor
    from mbpo_lit.vlm.chat import encode_prompts

    record = WorldSource(["train"], 1).load()[0][0]
    batch = encode_prompts(load_processor(path, cfg.arch), [record["question"]], [record["image"]])
    return int(batch["attention_mask"].sum())


def run(cfg: BenchConfig) -> dict:
    """Run every measurement, write the JSON to `cfg.out` and return the results."""
    path = checkpoint(cfg)
    skipped = {"unavailable": "skipped (--sections)"}
    grpo = "grpo" in cfg.sections
    results = {
        "config": asdict(cfg),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "prompt_tokens": prompt_tokens(cfg, path),
        "mbpo_lit": _isolated(bench_mbpo, cfg, path, True) if grpo else skipped,
        "rowwise": _isolated(bench_mbpo, cfg, path, False) if grpo else skipped,
        "trl": bench_trl(cfg, path) if grpo else skipped,
        "pgd": _isolated(bench_pgd, cfg, path) if "pgd" in cfg.sections else skipped,
        "mine_sizes": _isolated(bench_mine_sizes, cfg, path) if "mine_sizes" in cfg.sections else skipped,
        "padding": bench_padding(cfg, path) if "padding" in cfg.sections else skipped,
    }
    results["ratios"] = ratios(results)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


# The GRPO step's metrics, in the side-by-side table (the rest of each side's dict goes to the JSON only).
STEP_METRICS = (
    "step_s",
    "step_s_min",
    "step_s_max",
    "samples_per_s",
    "generated_tokens_per_s",
    "vision_calls_per_step",
    "images_encoded_per_step",
    "distinct_images_per_step",
    "peak_memory_mb",
)


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def format_results(results: dict) -> str:
    """The GRPO step side by side (mbpo_lit shared prefix, rowwise, TRL, and each against mbpo_lit), then the
    other measurements, the ratios, and the settings the TRL side could not match."""
    sides = ("mbpo_lit", "rowwise", "trl")
    trl = results["trl"]
    head = f"{'GRPO step':<26}" + "".join(f"{s:>14}" for s in sides) + f"{'rowwise/mbpo':>14}{'trl/mbpo':>14}"
    lines = [head] if "step_s" in results["mbpo_lit"] else ["GRPO step: skipped (--sections)"]
    for k in STEP_METRICS if "step_s" in results["mbpo_lit"] else ():
        row = [results[s].get(k, "-") for s in sides]
        fast = results["mbpo_lit"][k]
        rel = [r / fast if isinstance(r, (int, float)) and fast else "-" for r in row[1:]]
        lines.append(f"{k:<26}" + "".join(f"{_cell(v):>14}" for v in row + rel))
    lines.append(
        f"gradient checkpointing: {'on' if results['config']['gradient_checkpointing'] else 'off'}; "
        f"G {results['config']['group_size']}, {results['config']['prompts']} prompts of "
        f"{results['prompt_tokens']} tokens"
    )
    if "unavailable" in trl:
        lines.append(f"trl: {trl['unavailable']}")
    else:
        lines.append(f"trl {trl['trl_version']}, LoRA trained in {', '.join(trl['lora_dtype_trained'])}")
    lines.append("")
    lines.append(f"{'path':<11} {'metric':<44} value")
    for side in ("pgd", "mine_sizes", "padding", "ratios"):
        for k, v in results[side].items():
            lines.append(f"{side:<11} {k:<44} {_cell(v)}")
    if "trl_unmatched" in trl:
        lines.append("")
        lines.append("not matched on the TRL side:")
        lines += [f"  - {u}" for u in trl["trl_unmatched"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from mbpo_lit.cli import parse_dataclass, user_errors

    cfg = parse_dataclass(
        BenchConfig,
        "Time a hybrid GRPO step (shared prefix, rowwise, and TRL's GRPOTrainer when installed), PGD mining "
        "(also on photographs of mixed sizes) and padding with length grouping, on a tiny or small random "
        "checkpoint.",
        argv,
    )
    with user_errors():
        results = run(cfg)
    print(format_results(results))
    print(f"results: {cfg.out}")


if __name__ == "__main__":
    main()
