"""The MBPO LightningModule: a QLoRA policy trained with hybrid GRPO.

`training_step` is the algorithm: roll out (sample G completions per online prompt; take chosen and
rejected for each offline pair), score (verified rewards online, 2 / 0 offline), advantages (group-relative),
loss (clipped surrogate + KL to the adapter-disabled reference), repeated for `mu` inner iterations over the
same rollout. The model is built in `configure_model`, so `--help` and `--print_config` stay fast, and
checkpoints hold only what trains (the LoRA weights) and the optimizer state.
"""

from __future__ import annotations

from typing import Literal

import lightning as L
import torch
from torchmetrics import MeanMetric

from mbpo_lit.answers import is_correct
from mbpo_lit.chat import answer_token_ids, append_completions, encode_prompts, vision_token_ids
from mbpo_lit.grpo import group_advantages, grpo_loss, offline_pair_rewards
from mbpo_lit.logprobs import completion_logprobs
from mbpo_lit.model import LoraSettings, ModelConfig, load_policy, reference_mode, trainable_parameters
from mbpo_lit.rewards import AccuracyReward, FormatReward, LengthPenalty, compose

# Checkpoints store the hyper-parameters, ModelConfig included; let Lightning's weights-only loading of
# `--ckpt_path` accept these two plain dataclasses (and nothing else of ours).
torch.serialization.add_safe_globals([ModelConfig, LoraSettings])


class MBPOModule(L.LightningModule):
    """Hybrid GRPO over offline pairs and online prompts (see the module docstring).

    Args:
        model: how to load the policy (hub id or directory, quantization, LoRA).
        group_size: G, completions sampled per online prompt.
        temperature, top_p, max_new_tokens: sampling of the online rollout.
        beta: KL weight; 0 skips the reference pass entirely.
        eps_low, eps_high: clipping range of the importance ratio (DAPO's clip-higher: eps_high > eps_low).
        mu: optimisation passes over one rollout (1: on-policy, ratio 1).
        scale_std: divide advantages by the group std (False: Dr. GRPO).
        aggregation: "grpo" (per-sequence mean), "dapo" (token mean), "dr_grpo" (constant normaliser).
        chosen_reward, rejected_reward: rewards of an offline pair (MBPO: 2 and 0).
        format_weight, length_coef: weights of the format reward and the length penalty (online stream).
        lr, weight_decay, max_grad_norm: AdamW on the adapters, gradient clipping.
        sample_table_every: print a table of sample completions every N steps (0: never).
        evaluate_after_fit, evaluate_n: after `python -m mbpo_lit.fit`, evaluate base (adapters disabled)
            and trained policy on the world's eval splits, `evaluate_n` records each.
    """

    def __init__(
        self,
        model: ModelConfig,
        group_size: int = 4,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 8,
        beta: float = 0.0,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        mu: int = 1,
        scale_std: bool = True,
        aggregation: Literal["grpo", "dapo", "dr_grpo"] = "grpo",
        chosen_reward: float = 2.0,
        rejected_reward: float = 0.0,
        format_weight: float = 0.5,
        length_coef: float = 0.1,
        vocabulary: list[str] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        sample_table_every: int = 50,
        evaluate_after_fit: bool = True,
        evaluate_n: int = 200,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model_config = model
        self.automatic_optimization = False  # mu inner iterations over one rollout
        self.strict_loading = False  # checkpoints hold the adapters, not the frozen base
        self.policy = None
        self.evaluate_after_fit, self.evaluate_n = evaluate_after_fit, evaluate_n
        self.val_in_prior, self.val_counter_prior = MeanMetric(), MeanMetric()
        self.set_vocabulary(vocabulary)

    def set_vocabulary(self, vocabulary: list[str] | None) -> None:
        """Answer words for colour/phrase answers (e.g. the world's colours), and the rewards that use them."""
        self.vocabulary = vocabulary
        self.rewards = {
            "accuracy": (AccuracyReward(vocabulary), 1.0),
            "format": (FormatReward(vocabulary=vocabulary), self.hparams.format_weight),
            "length": (LengthPenalty(coef=self.hparams.length_coef), 1.0),
        }

    # ------------------------------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.policy is not None:
            return
        cfg = self.model_config
        if cfg.device is None and self.trainer is not None:
            cfg.device = str(self.trainer.strategy.root_device)
        self.policy = load_policy(cfg)
        self.model = self.policy.model  # registered as a submodule, so Lightning moves and saves it

    @property
    def processor(self):
        return self.policy.processor

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        trainable = set(trainable_parameters(self))
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trainable}

    def configure_optimizers(self):
        params = list(trainable_parameters(self).values())
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ---------------------------------------------------------------------------------------- rollout
    def _cut(self, ids: torch.Tensor) -> list[list[int]]:
        """Generated ids -> completions, each ending at (and including) its first end-of-turn token."""
        eos, pad = self.processor.tokenizer.eos_token_id, self.processor.tokenizer.pad_token_id
        out = []
        for row in ids.tolist():
            if eos in row:
                row = row[: row.index(eos) + 1]
            else:
                while row and row[-1] == pad:
                    row = row[:-1]
            out.append(row or [eos])
        return out

    @torch.no_grad()
    def rollout(self, online: list[dict]) -> tuple[list[dict], list[list[int]], list[str]]:
        """G sampled completions per online prompt: (records repeated G times, token ids, texts)."""
        if not online:
            return [], [], []
        g, p = self.hparams.group_size, self.processor
        batch = encode_prompts(p, [r["question"] for r in online], [r["image"] for r in online],
                               record_ids=[r.get("id") for r in online]).to(self.device)
        self.model.eval()
        ids = self.model.generate(**batch, do_sample=True, num_return_sequences=g, max_new_tokens=self.hparams.max_new_tokens,
                                  temperature=self.hparams.temperature, top_p=self.hparams.top_p, top_k=None,
                                  suppress_tokens=vision_token_ids(p))
        self.model.train()
        completions = self._cut(ids[:, batch["input_ids"].shape[1]:])
        texts = p.batch_decode(completions, skip_special_tokens=True)
        return [r for r in online for _ in range(g)], completions, texts

    def sequence_batch(self, records: list[dict], completions: list[list[int]]):
        """Prompt + completion batch for the log-prob passes (same encoding as the rollout)."""
        p = self.processor
        batch = encode_prompts(p, [r["question"] for r in records], [r["image"] for r in records])
        batch, mask = append_completions(batch, completions, p.tokenizer.pad_token_id)
        return batch.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        online, offline = batch["online"], batch["offline"]
        hp = self.hparams
        # 1. Roll out: G samples per online prompt; chosen and rejected per offline pair.
        on_records, on_ids, on_texts = self.rollout(online)
        off_records = [r for r in offline for _ in range(2)]
        off_texts = [t for r in offline for t in (r["answer"], r["rejected"])]
        off_ids = answer_token_ids(self.processor, off_texts)
        # 2. Score.
        on_rewards, parts = compose(self.rewards, on_texts, on_records) if on_records else ([], {})
        # 3. Advantages, group by group.
        adv = []
        if on_records:
            adv.append(group_advantages(torch.tensor(on_rewards).view(-1, hp.group_size), hp.scale_std).flatten())
        if offline:
            pair_rewards = offline_pair_rewards(len(offline), hp.chosen_reward, hp.rejected_reward)
            adv.append(group_advantages(pair_rewards, hp.scale_std).flatten())
        advantages = torch.cat(adv).to(self.device)
        seq, mask = self.sequence_batch(on_records + off_records, on_ids + off_ids)
        width = max(len(c) for c in on_ids + off_ids)
        # 4. Loss, mu times over the same rollout.
        old = None
        if hp.mu > 1:
            with torch.no_grad():
                old = completion_logprobs(self.model, seq, mask)
        ref = None
        if hp.beta != 0:
            with reference_mode(self.model):
                ref = completion_logprobs(self.model, seq, mask)
        opt = self.optimizers()
        for _ in range(hp.mu):
            logp = completion_logprobs(self.model, seq, mask)
            m = mask[:, -logp.shape[1]:]
            out = grpo_loss(logp, old if old is not None else logp.detach(), advantages, m, ref, hp.beta,
                            hp.eps_low, hp.eps_high, hp.aggregation, hp.max_new_tokens)
            if not torch.isfinite(out.loss):
                raise FloatingPointError(
                    f"non-finite GRPO loss ({out.loss.item()}) at step {self.global_step}; training stopped. "
                    f"The last good checkpoint is the last one the ModelCheckpoint callback wrote."
                )
            opt.zero_grad()
            self.manual_backward(out.loss)
            self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
        self._log_step(out, on_rewards, parts, on_records, on_texts, offline, mask, width)
        return out.loss.detach()

    def _log_step(self, out, on_rewards, parts, on_records, on_texts, offline, mask, width) -> None:
        def mean_std(v):
            t = torch.tensor(v, dtype=torch.float32)
            return t.mean().item(), (t.std().item() if len(v) > 1 else 0.0)

        logs = {"loss": out.loss.item(), "kl": out.kl.item(), "clip_fraction": out.clip_fraction.item(),
                "completion_length": mask.sum(1).float().mean().item()}
        if on_rewards:
            logs["online/reward_mean"], logs["online/reward_std"] = mean_std(on_rewards)
            logs["online/accuracy"] = sum(parts["accuracy"]) / len(parts["accuracy"])
        if offline:
            r = offline_pair_rewards(len(offline), self.hparams.chosen_reward, self.hparams.rejected_reward).flatten()
            logs["offline/reward_mean"], logs["offline/reward_std"] = r.mean().item(), r.std().item()
        self.log_dict(logs, prog_bar=False, batch_size=max(1, len(on_records) + 2 * len(offline)))
        every = self.hparams.sample_table_every
        if every and self.global_step % every == 0 and on_texts and self.global_rank == 0:
            rows = [f"  {r['question'][:40]:<40} | {r['answer']:<8} | {t[:30]!r}" for r, t in list(zip(on_records, on_texts))[:8]]
            self.print(f"step {self.global_step} samples (question | answer | completion):\n" + "\n".join(rows))

    # -------------------------------------------------------------------------------------- validation
    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        p = self.processor
        enc = encode_prompts(p, [r["question"] for r in batch], [r["image"] for r in batch]).to(self.device)
        ids = self.model.generate(**enc, do_sample=False, max_new_tokens=self.hparams.max_new_tokens,
                                  suppress_tokens=vision_token_ids(p))
        texts = p.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, t in zip(batch, texts):
            metric = self.val_in_prior if r.get("follows_prior", True) else self.val_counter_prior
            metric.update(float(is_correct(t, r["answer"], r["answer_type"], self.vocabulary)))
        # Log both on every rank and step: a key logged on one rank only would hang a distributed sync.
        self.log("val/in_prior_accuracy", self.val_in_prior, on_epoch=True, on_step=False)
        self.log("val/counter_prior_accuracy", self.val_counter_prior, on_epoch=True, on_step=False)

