"""The MBPO LightningModule: a QLoRA policy trained with hybrid GRPO.

`training_step` is the algorithm: roll out (sample G completions per online prompt; take chosen and
rejected for each offline pair), score (verified rewards online, 2 / 0 offline), advantages (group-relative),
loss (clipped surrogate + KL to the reference, the starting policy), repeated for `mu` inner iterations over the
same rollout. The rollout and the scoring are `train/rollout.py`'s, with its two ablation options: some of a
group's samples drawn from an adversarially perturbed image (`sampling.perturbed_k`), and offline pairs joining
online groups (`loss.offline_as: mixed_groups`). The rollout samples by one rule in both layouts, and the loss
scores the distribution it drew from (log softmax(logits / temperature); see `settings.Sampling`). By default
each distinct image is encoded once per step and each prompt prefilled once for all its completions
(`share_prefix`, see vlm/shared_prefix.py); the result is the same as one row per completion. `loss.kind: sft`
trains the same policy on the same batches by maximum likelihood of the reference answers instead (`sft_step`),
the supervised reference line of the ablations.
The model is built in `configure_model`, so `--help` and `--print_config` stay fast, and checkpoints hold only
what trains (the LoRA weights) and the optimizer state.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from mbpo_lit.core.answers import CLOSED_TYPES, is_correct
from mbpo_lit.core.errors import SettingsError
from mbpo_lit.core.grpo import LossParts
from mbpo_lit.core.rewards import keyed
from mbpo_lit.core.streams import stream_loss
from mbpo_lit.mining.config import budget_mismatch, mining_folder
from mbpo_lit.train.rollout import Drawn, Rollout
from mbpo_lit.train.samples import append_jsonl, format_samples, log_samples, sample_rows
from mbpo_lit.train.schedule import LrCurve, lr_scheduler, total_optimizer_steps
from mbpo_lit.train.scored import Scored
from mbpo_lit.train.settings import Loss, Optimization, Rewards, Sampling
from mbpo_lit.train.step_logs import PROGRESS_BAR, gradient_norm, loss_scale, peak_memory_gb, step_metrics
from mbpo_lit.vlm import sampling
from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.arch import pixel_budget
from mbpo_lit.vlm.chat import append_completions, encode_prompts
from mbpo_lit.vlm.logprobs import answer_logprobs, completion_logprobs
from mbpo_lit.vlm.policy import LoraSettings, ModelConfig, load_policy, reference_mode, trainable_parameters
from mbpo_lit.vlm.sampling import SamplingRule

# Checkpoints store the hyper-parameters, the settings dataclasses included; let Lightning's weights-only
# loading of `--ckpt_path` accept these plain dataclasses (and nothing else of ours).
torch.serialization.add_safe_globals([ModelConfig, LoraSettings, Sampling, Loss, Rewards, Optimization])
# Lightning warns when modules are in eval mode as training starts (a checkpoint loads in eval mode). Every step sets
# the mode it needs itself: eval to sample the rollout, train for the loss passes.
warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
# Lightning's pytree helper (`lightning.pytorch.utilities._pytree`) builds a torch `LeafSpec`, deprecated by torch: a
# FutureWarning about Lightning's internals, at every fit, that a user cannot act on.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


class MBPOModule(L.LightningModule):
    """Hybrid GRPO over offline pairs and online prompts (see the module docstring).

    Args:
        model: how to load the policy (hub id or directory, quantization, LoRA).
        sampling: the online rollout (G, temperature, top-k, top-p, completion length) and its rule.
        loss: the objective (GRPO, or "sft"), and GRPO's KL weight, clipping, mu, advantage scaling, aggregation.
        rewards: offline pair rewards, the online reward plug-ins (core/rewards.py), answer vocabulary.
        optim: AdamW, its learning-rate schedule, gradient clipping and accumulation.
        sample_table_every: every N steps, print a table of sample completions and append them to
            `samples.jsonl` in the log directory (0: never).
        share_prefix: encode each distinct image once per step and prefill each prompt once for all its
            completions (vlm/shared_prefix.py). False runs one row per completion through the whole model in
            every pass: the same numbers, slower; kept as the reference the tests and the benchmark compare to.
        evaluate_after_fit: after `python -m mbpo_lit fit`, evaluate the starting policy (the reference:
            adapters disabled, or the starting adapters of a fit from `adapter_path`) and the trained policy on
            the data module's eval set, and print the table.
    """

    def __init__(
        self,
        model: ModelConfig,
        sampling: Sampling = Sampling(),
        loss: Loss = Loss(),
        rewards: Rewards = Rewards(),
        optim: Optimization = Optimization(),
        sample_table_every: int = 50,
        share_prefix: bool = True,
        evaluate_after_fit: bool = True,
    ):
        super().__init__()
        # Copies: the defaults above are shared, and set_vocabulary changes the rewards' vocabulary.
        self.sampling, self.loss, self.optim = replace(sampling), replace(loss), replace(optim)
        self.reward_settings = replace(rewards)
        if self.optim.accumulate_grad_batches > 1 and self.loss.mu > 1:
            raise SettingsError(
                f"optim.accumulate_grad_batches={self.optim.accumulate_grad_batches} with "
                f"loss.mu={self.loss.mu}: accumulation needs mu = 1 (each of mu passes steps the optimizer)"
            )
        self.save_hyperparameters()
        self.model_config = model
        self.automatic_optimization = False  # mu inner iterations over one rollout
        self._dapo_tokens = 0.0  # "dapo": completion tokens of the micro-batches since the last optimizer step
        self.strict_loading = False  # checkpoints hold the adapters, not the frozen base
        self.policy = None
        self.evaluate_after_fit = evaluate_after_fit
        self.val_accuracy = MeanMetric()
        self.val_group_accuracy = torch.nn.ModuleDict()  # metric key -> accuracy of one group of the eval set
        self.val_group_names: dict[str, str] = {}  # group name -> metric key (ModuleDict keys cannot hold ".")
        self.set_vocabulary(self.reward_settings.vocabulary)
        self.val_vocabulary = self.vocabulary

    def set_vocabulary(self, vocabulary: list[str] | None) -> None:
        """Answer words for colour/phrase answers (e.g. a synthetic world's colours), and the rewards using them."""
        self.vocabulary = vocabulary
        self.reward_settings.vocabulary = vocabulary
        self.rewards = keyed(self.reward_settings.online())  # log key -> Reward

    # ------------------------------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        cfg = self.model_config
        if cfg.device is None and self.trainer is not None:
            cfg.device = str(self.trainer.strategy.root_device)
        # Fresh LoRA weights are drawn from (sampling.seed), not from whatever the process drew before (a mining
        # job in the same process, say): the same recipe starts from the same adapters.
        with torch.random.fork_rng():
            torch.manual_seed(self.sampling.seed)
            self.policy = load_policy(cfg)
        self.model = self.policy.model  # registered as a submodule, so Lightning moves and saves it
        if self.hparams.share_prefix:
            prefix.check_frozen_vision(self.model, self.policy.arch)
        # Pairs mined under another image budget are resized again: no longer the pictures that were attacked.
        pairs = getattr(getattr(self._trainer, "datamodule", None), "pairs_path", None)
        if pairs and (note := budget_mismatch(mining_folder(pairs), pixel_budget(self.processor))):
            rank_zero_warn(f"data.pairs: {note}")

    @property
    def processor(self):
        return self.policy.processor

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = set(trainable_parameters(self))
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}
        # The reward plug-ins may be a user's classes, which weights-only loading refuses: the checkpoint keeps
        # their description (the recipe, config.yaml, keeps them whole).
        hp = checkpoint.get("hyper_parameters", {})
        if isinstance(hp.get("rewards"), Rewards):
            described = [repr(r) for r in self.rewards.values()]
            hp["rewards"] = replace(hp["rewards"], functions=None, extra=[])
            hp["reward_functions"] = described

    def on_train_end(self) -> None:
        """The trained adapters as a peft folder, `<default_root_dir>/adapter` (see train/checkpoint.py)."""
        if self.trainer.is_global_zero and self.policy is not None:
            from mbpo_lit.train.checkpoint import export_adapter

            export_adapter(self, Path(self.trainer.default_root_dir) / "adapter")

    def configure_optimizers(self):
        """AdamW on the adapters, and the learning-rate schedule (`optim.schedule`), which `_optimizer_step`
        steps after every optimizer step; Lightning saves and restores both with the checkpoint."""
        params = list(trainable_parameters(self).values())
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        o, total = self.optim, 1
        if o.schedule != "constant":  # decay needs the run's length
            t = self.trainer
            total = total_optimizer_steps(
                t.max_steps, t.estimated_stepping_batches, self.loss.mu, o.accumulate_grad_batches
            )
        curve = LrCurve(o.warmup_steps, total, o.schedule, o.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": lr_scheduler(opt, curve), "interval": "step"}}

    # ---------------------------------------------------------------------------------------- rollout
    def rollouts(self) -> Rollout:
        """The step's rollout and scoring (train/rollout.py) over this module's policy and settings."""
        pair = (self.reward_settings.chosen, self.reward_settings.rejected)
        return Rollout(self.model, self.processor, self.sampling, self.loss, self.rewards, pair, self.device)

    def sampling_rule(self) -> SamplingRule:
        """The rollout's sampling rule (`Rollout.rule`)."""
        return self.rollouts().rule()

    def rollout(self, online: list[dict], prompts: prefix.Prompts | None = None) -> Drawn:
        """G sampled completions per online prompt: (records repeated G times, token ids, texts); with `prompts`
        (the prompts, already encoded) from one prefill each (`Rollout.sample`)."""
        return self.rollouts().sample(online, prompts)

    def sequence_batch(self, records: list[dict], completions: list[list[int]]):
        """Prompt + completion batch for the log-prob passes (same encoding as the rollout)."""
        p = self.processor
        batch = encode_prompts(p, [r["question"] for r in records], [r["image"] for r in records])
        batch, mask = append_completions(batch, completions, p.tokenizer.pad_token_id)
        return batch.to(self.device), mask.to(self.device)

    def logprobs(self, scored: Scored) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of every sequence's completion under the current weights, and their mask
        ([sequences, longest completion] each): log softmax(logits / sampling.temperature) of each token, the
        distribution the rollout drew from. Gradients flow unless called under `torch.no_grad`."""
        pad, temperature = self.processor.tokenizer.pad_token_id, self.sampling.temperature
        if scored.prompts is None:
            seq, mask = self.sequence_batch(scored.records, scored.ids)
            logp = completion_logprobs(self.model, seq, mask, temperature)
            return logp, mask[:, -logp.shape[1] :]
        return prefix.prefixed_completion_logprobs(
            self.model, scored.prompts, scored.ids, scored.repeats, pad, temperature
        )

    # ---------------------------------------------------------------------------------------- training
    def score(self, batch: dict) -> Scored:
        """Steps 1-3 of a training step, without touching the weights: roll out, score, advantages."""
        step = self.rollouts()
        records = step.sampled_records(batch)  # the online prompts (and, in mixed groups, the pairs' records)
        # One tokenization and one vision-tower call for the step's distinct prompts (share_prefix).
        prompts = step.encode(batch["online"] + batch["offline"]) if self.hparams.share_prefix else None
        drawn = self.rollout(records, prompts.take(range(len(records))) if prompts is not None else None)
        return step.score(batch, drawn, prompts)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, optim = self.loss, self.optim
        self._seed_step()  # 0. this step's randomness, a function of (seed, step): resumable exactly
        if loss.kind == "sft":  # the supervised reference line: no rollout, no rewards
            return self.sft_step(batch, batch_idx)
        start = time.perf_counter()
        # 1-3. Roll out (G samples per online prompt; chosen and rejected per offline pair), score, advantages.
        scored = self.score(batch)
        advantages = scored.advantages.to(self.device)
        # 4. Loss, mu times over the same rollout.
        ref = None
        if loss.beta != 0 or (loss.offline_loss == "dpo" and len(scored.records) > scored.n_online):
            with reference_mode(self.model):
                ref, _ = self.logprobs(scored)
        opt, old = self.optimizers(), None
        for _ in range(loss.mu):
            logp, mask = self.logprobs(scored)
            if old is None:  # the weights that sampled the rollout: the first pass's, before any update
                old = logp.detach()
            out, terms = stream_loss(
                logp,
                old,
                advantages,
                mask,
                ref,
                scored.n_online,
                **loss.terms(),
                max_tokens=self.sampling.max_new_tokens,
            )
            if not torch.isfinite(out.loss):
                raise FloatingPointError(
                    f"non-finite GRPO loss ({out.loss.item()}) at step {self.global_step}; training stopped. "
                    f"The last good checkpoint is the last one the ModelCheckpoint callback wrote."
                )
            self.manual_backward(out.loss * self._backward_weight(mask))
            if (batch_idx + 1) % optim.accumulate_grad_batches == 0:
                self._optimizer_step(opt)
        self._log_step(out, scored, mask, time.perf_counter() - start, terms)
        return out.loss.detach()

    def reference_logprobs(self, records: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of each record's reference answer (`answer`: an offline pair's chosen answer, an
        online prompt's ground truth) given its image and question, and their mask ([records, longest answer]
        each). Log softmax at temperature 1, the model's own distribution; gradients flow."""
        return answer_logprobs(
            self.model,
            self.processor,
            [r["question"] for r in records],
            [r["answer"] for r in records],
            [r["image"] for r in records],
        )

    def sft_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """`loss.kind: sft`: one maximum-likelihood step on the batch's reference answers, the offline pairs'
        chosen answers and the online prompts' ground truth (each prompt once, nothing sampled). The loss is the
        mean negative log-likelihood per answer token; accumulation and clipping as for GRPO."""
        records = batch["online"] + batch["offline"]
        logp, mask = self.reference_logprobs(records)
        nll = -(logp * mask).sum() / mask.sum().clamp(min=1)
        if not torch.isfinite(nll):
            raise FloatingPointError(f"non-finite SFT loss ({nll.item()}) at step {self.global_step}")
        self.manual_backward(nll * self._backward_weight(mask))
        if (batch_idx + 1) % self.optim.accumulate_grad_batches == 0:
            self._optimizer_step(self.optimizers())
        logs = {"loss": nll.item(), "completion_length": mask.sum(1).float().mean().item()}
        self._log(logs | self._optimizer_logs(), len(records))
        return nll.detach()

    def _seed_step(self) -> None:
        """Seed torch's generators from (sampling.seed, the run's batch index, rank): the rollout's draws and any
        dropout of this step then depend on where the run is, not on what the process did before (a mining job,
        the batches of an interrupted run), so a resumed run repeats the uninterrupted one."""
        trainer = self._trainer
        if trainer is None:  # called outside a Trainer (unit tests): the caller owns the random state
            return
        batch = trainer.fit_loop.total_batch_idx
        state = np.random.SeedSequence([self.sampling.seed, batch, trainer.global_rank]).generate_state(1)
        torch.manual_seed(int(state[0]))

    def _backward_weight(self, mask: torch.Tensor) -> float:
        """What one micro-batch's loss is multiplied by before `backward`, so that the optimizer step gets the
        gradient of the loss over its whole batch (every micro-batch of `optim.accumulate_grad_batches`).

        "dapo": the micro-batch's token count, making its gradient that of its per-token terms' sum; the step
        divides by the total token count once all micro-batches are in (`_optimizer_step`). The others: 1 / the
        number of micro-batches, the mean of their losses (so "bnpo" is a mean of per-micro-batch token means).
        """
        if self.loss.aggregation == "dapo":
            tokens = mask.sum().item()
            self._dapo_tokens += tokens
            return tokens
        return 1.0 / self.optim.accumulate_grad_batches

    def _optimizer_step(self, opt) -> None:
        """Clip, step and clear the accumulated gradients. Under "dapo", first divide them by the token count of
        the whole batch: all micro-batches since the last step, summed over the DDP ranks. DDP has averaged the
        gradients over its W ranks, so they are scaled by W / that count: the gradient of the sum of every
        rank's per-token terms over all their tokens, exactly DAPO's token-level loss."""
        if self.loss.aggregation == "dapo":
            tokens, ranks = self._summed_over_ranks(self._dapo_tokens)
            self._dapo_tokens = 0.0
            scale = ranks / max(tokens, 1.0)
            for p in trainable_parameters(self).values():
                if p.grad is not None:
                    p.grad.mul_(scale)
        params = list(trainable_parameters(self).values())
        # Under fp16-mixed the gradients are still multiplied by the loss scale here (the optimizer step unscales
        # them, after this manual clip): norm and threshold are taken in those units, so the clip acts on the
        # true gradients.
        scale = loss_scale(self._trainer)
        self._last_grad_norm = gradient_norm(params) / scale  # before clipping: how far the step wanted to go
        self.clip_gradients(opt, gradient_clip_val=self.optim.max_grad_norm * scale, gradient_clip_algorithm="norm")
        self._last_lr = opt.param_groups[0]["lr"]  # the rate this step used (the scheduler moves it next)
        opt.step()
        opt.zero_grad()
        scheduler = self.lr_schedulers() if self._trainer is not None else None  # unit tests step by hand
        if scheduler is not None:
            scheduler.step()

    def _summed_over_ranks(self, value: float) -> tuple[float, int]:
        """(`value` summed over the distributed ranks, number of ranks); (value, 1) outside a Trainer."""
        if self._trainer is None or self.trainer.world_size == 1:
            return value, 1
        total = self.trainer.strategy.reduce(torch.tensor(value, device=self.device), reduce_op="sum")
        return float(total), self.trainer.world_size

    def _log_step(
        self, out: LossParts, scored: Scored, mask: torch.Tensor, seconds: float, terms: dict[str, torch.Tensor]
    ) -> None:
        logs = step_metrics(out, scored, mask, seconds) | self._optimizer_logs()
        logs |= {k: v.item() for k, v in terms.items()}  # each stream's policy term, under streams "separate"
        self._log(logs, len(scored.records))
        every = self.hparams.sample_table_every
        if every and self.global_step % every == 0 and scored.n_online and self.global_rank == 0:
            self._write_samples(scored)

    def _optimizer_logs(self) -> dict[str, float]:
        """The last optimizer step's learning rate and gradient norm (none before the first step of an
        accumulating run), and peak memory."""
        logs = {"perf/peak_memory_gb": peak_memory_gb(self.device)}
        if hasattr(self, "_last_lr"):
            logs |= {"lr": self._last_lr, "grad_norm": self._last_grad_norm}
        return logs

    def _log(self, logs: dict[str, float], batch_size: int) -> None:
        """Log a step's metrics; the `PROGRESS_BAR` ones are shown in the progress bar too."""
        bar = {k: v for k, v in logs.items() if k in PROGRESS_BAR}
        rest = {k: v for k, v in logs.items() if k not in PROGRESS_BAR}
        self.log_dict(bar, prog_bar=True, batch_size=max(1, batch_size))
        self.log_dict(rest, prog_bar=False, batch_size=max(1, batch_size))

    def _write_samples(self, scored: Scored) -> None:
        """The sample table: printed, and appended to `samples.jsonl` in the run's log directory."""
        rows = sample_rows(self.global_step, scored)
        self.print(format_samples(rows))
        logger_dir = self.logger.log_dir if self.logger is not None else None
        append_jsonl(Path(logger_dir or self.trainer.default_root_dir) / "samples.jsonl", rows)
        log_samples(self.loggers, rows, self.global_step)

    # -------------------------------------------------------------------------------------- validation
    def setup(self, stage: str) -> None:
        """One accuracy metric per group of the eval set (known once the data module is set up), so the same
        keys are logged on every rank: a key logged on one rank only would hang a distributed sync."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for group in getattr(datamodule, "val_groups", []):
            key = f"group_{re.sub(r'[^0-9A-Za-z_]', '_', group)}_{len(self.val_group_names)}"
            if group not in self.val_group_names:
                self.val_group_names[group] = key
                self.val_group_accuracy[key] = MeanMetric()
        # The eval set's own answer vocabulary, if it has one (as the after-fit table uses), else the rewards'.
        self.val_vocabulary = getattr(getattr(datamodule, "val", None), "vocabulary", None) or self.vocabulary

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        # Close-ended records only: descriptions have no single right answer (the after-fit table scores them
        # with CHAIR).
        batch = [r for r in batch if r["answer_type"] in CLOSED_TYPES]
        if not batch:
            return
        p = self.processor
        enc = encode_prompts(p, [r["question"] for r in batch], [r["image"] for r in batch]).to(self.device)
        greedy = SamplingRule.of(self.model, p)
        texts = sampling.answer_texts(self.model, p, enc, self.sampling.max_new_tokens, greedy)
        for r, t in zip(batch, texts):
            correct = float(is_correct(t, r["answer"], r["answer_type"], self.val_vocabulary))
            self.val_accuracy.update(correct)
            if r.get("group") in self.val_group_names:
                self.val_group_accuracy[self.val_group_names[r["group"]]].update(correct)
        self.log("val/accuracy", self.val_accuracy, on_epoch=True, on_step=False)
        for group, key in self.val_group_names.items():
            self.log(f"val/{group}_accuracy", self.val_group_accuracy[key], on_epoch=True, on_step=False)
