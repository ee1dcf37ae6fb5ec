"""The TRL side of the GRPO step benchmark: TRL's GRPOTrainer on the settings of the mbpo_lit side (the same
checkpoint, LoRA, prompts and images per step, rewards, and every GRPO setting TRL has), in its own process.
What cannot be set the same is listed in `TRL_UNMATCHED`."""

from __future__ import annotations

import importlib.util
import tempfile
import time

import torch

from mbpo_lit.experiments.bench.config import BENCH_LORA, BenchConfig
from mbpo_lit.experiments.bench.step import count_vision_calls, isolated, peak_memory_mb, step_results, step_stats

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
    return isolated(train_trl, cfg, path)


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


def train_trl(cfg: BenchConfig, path: str) -> dict:
    """The TRL side: GRPOTrainer on the base model mbpo_lit loads (same quantization and precision), with the
    same LoRA config, the same per-step prompts and images (batch i of the same HybridDataModule), and
    mbpo_lit's composed online reward (accuracy + format + length penalty, the same weights)."""
    import trl
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOTrainer

    from mbpo_lit.testbed.world_source import WorldSource
    from mbpo_lit.train.settings import Rewards
    from mbpo_lit.vlm.chat import vision_token_ids
    from mbpo_lit.vlm.policy import ModelConfig, load_policy

    online = WorldSource(["train"], 256)
    dataset = trl_dataset(cfg, online)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy = load_policy(
        ModelConfig(path, precision=cfg.precision, quantization=cfg.quantization, lora=None, device=device)
    )
    settings, tokens = Rewards(vocabulary=online.vocabulary), [0]
    rewards = trl_rewards(settings, online.vocabulary, tokens)
    with tempfile.TemporaryDirectory() as out_dir:
        args = _trl_config(cfg, out_dir, vision_token_ids(policy.processor))
        args.reward_weights = [fn.weight for fn in settings.online()]
        timer = _TrlStepTimer(TrainerCallback)
        trainer = GRPOTrainer(
            model=policy.model,
            reward_funcs=rewards,
            args=args,
            train_dataset=dataset,
            processing_class=policy.processor,
            peft_config=trl_lora(policy),
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
        **step_results(cfg, stats, tokens[0], calls, peak_memory_mb(torch.device(device))),
        "trl_version": trl.__version__,
        "lora_dtype_from_trl": sorted(lora_dtypes),
        "lora_dtype_trained": sorted({str(p.dtype) for p in trainer.model.parameters() if p.requires_grad}),
        "trl_unmatched": unmatched,
    }


def trl_dataset(cfg: BenchConfig, online):
    """The prompts of every step as a `datasets.Dataset`, in order: batch i of the HybridDataModule the mbpo_lit
    side reads, so both sides see the same prompts and images in the same steps."""
    from datasets import Dataset

    from mbpo_lit.data.hybrid import HybridDataModule

    total = cfg.warmup + cfg.steps
    data = HybridDataModule(pairs=None, online=online, val=None, online_per_batch=cfg.prompts, batches_per_epoch=total)
    data.setup()
    records = [r for i in range(total) for r in data.train_set[i]["online"]]
    return Dataset.from_list(
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


def trl_lora(policy):
    """peft's LoraConfig of `BENCH_LORA` on the policy's architecture (the adapters of the mbpo_lit side)."""
    from peft import LoraConfig

    lora = BENCH_LORA
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=policy.arch.lora_target_regex(lora.targets),
        task_type="CAUSAL_LM",
    )


def trl_rewards(settings, vocabulary, tokens: list[int]) -> list:
    """mbpo_lit's online rewards (`settings.online()`: accuracy, format, length penalty) as TRL reward functions;
    the first one also adds the completions' token count to `tokens[0]`."""

    def as_reward(fn, name: str, count_tokens: bool = False):
        def reward(prompts, completions, completion_ids, answer, answer_type, choices, **kwargs):
            if count_tokens:
                tokens[0] += sum(len(c) for c in completion_ids)
            texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
            recs = [
                {"answer": a, "answer_type": t, "choices": c}
                for a, t, c in zip(answer, answer_type, choices, strict=True)
            ]
            return fn(prompts, texts, recs)

        reward.__name__ = name
        return reward

    return [as_reward(fn, fn.key, count_tokens=i == 0) for i, fn in enumerate(settings.online())]


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
