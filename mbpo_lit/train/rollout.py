"""Steps 1-3 of a GRPO step, without touching the weights: roll out, score, advantages.

Roll out: G completions sampled from the current policy per online prompt (`Rollout.sample`). Score: the online
completions by the verified rewards (`core.rewards.compose`), each offline pair's chosen and rejected answers by
the fixed pair rewards (2 / 0). Advantages: group-relative, within each group.

Two ablation options use the adversary inside the online groups, both off by default:

- `sampling.perturbed_k: k` draws k of each prompt's G samples from an adversarially perturbed copy of its image
  (`Rollout.perturb`: PGD against the current policy that pushes the ground-truth answer's log-likelihood down,
  rounded to an 8-bit picture), the other G - k from the clean image, as NoisyRollout (Liu et al., arXiv
  2504.13055) mixes rollouts from distorted images into a group. All G are scored alike, the advantages are over
  the whole group, and the loss passes read every row on the clean image: the perturbed image only changes where
  the samples come from.
- `loss.offline_as: mixed_groups` gives each offline pair's record G online samples too, and appends the pair's
  chosen and rejected answers to that group: G + 2 rows scored by the verified rewards (not the fixed 2 / 0),
  with advantages over all of them, every row an online row for the loss.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import ProcessorMixin

from mbpo_lit.core.attack import pgd, to_uint8_grid
from mbpo_lit.core.grpo import group_advantages, offline_pair_rewards
from mbpo_lit.core.rewards import Reward, compose
from mbpo_lit.mining.miner import valid_pixels
from mbpo_lit.train.scored import Scored
from mbpo_lit.train.settings import Loss, Sampling
from mbpo_lit.vlm import sampling
from mbpo_lit.vlm import shared_prefix as prefix
from mbpo_lit.vlm.chat import answer_token_ids, encode_prompts
from mbpo_lit.vlm.codec import PixelCodec, pad_stack, to_pil, unpad
from mbpo_lit.vlm.logprobs import answer_logprobs
from mbpo_lit.vlm.sampling import SamplingRule

Drawn = tuple[list[dict], list[list[int]], list[str]]  # (records, one per completion; token ids; texts)
Sizes = list[tuple[int, int]] | None  # (height, width) of each image of a `pad_stack`; None: one size
Objective = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # what `core.attack.pgd` takes


def grouped_advantages(rewards: torch.Tensor, sizes: Sequence[int], scale_std: bool) -> torch.Tensor:
    """`group_advantages` over consecutive groups of the given sizes ([sequences] in, [sequences] out).

    Each run of equal-sized groups goes through `group_advantages` as one [groups, size] tensor, so groups of one
    size give exactly the numbers of one call over all of them."""
    out, start = [], 0
    for size, run in itertools.groupby(sizes):
        n = len(list(run))
        out.append(group_advantages(rewards[start : start + n * size].view(n, size), scale_std).flatten())
        start += n * size
    return torch.cat(out) if out else rewards.new_zeros(0)


def answer_loglik(
    model: torch.nn.Module, processor: ProcessorMixin, codec: PixelCodec, records: list[dict], sizes: Sizes
) -> Objective:
    """PGD's objective for `records`: (raw images, index) -> (the summed log-likelihood of the ground-truth answer
    of each record at `index` given its question and that raw image, differentiable in the images; all True, "not
    yet successful": the attack runs every step). `sizes` are the images' (height, width) in a `pad_stack`."""

    def value(images: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        picked = [records[i] for i in index.tolist()]
        part = None if sizes is None else [sizes[i] for i in index.tolist()]
        logp, _ = answer_logprobs(
            model,
            processor,
            [r["question"] for r in picked],
            [r["answer"] for r in picked],
            [r["image"] for r in picked],
            pixel_values=codec.encode(images, part)[0],
        )
        return logp.sum(1), torch.ones(len(picked), dtype=torch.bool)

    return value


@dataclass
class Rollout:
    """A training step's rollout and scoring over one policy and its settings (see the module docstring).

    Args:
        model: the policy (adapters on); it samples in eval mode and is left in train mode.
        processor: its processor.
        sampling: G, the sampling rule's knobs, and the perturbed rollouts' (`perturbed_k`, ...).
        loss: advantage scaling (`divides_by_std`) and where the offline pairs go (`offline_as`).
        rewards: the online rewards by log key (`core.rewards.keyed`).
        pair_rewards: an offline pair's (chosen, rejected) rewards, under `offline_as: pairs`.
        device: where the model's inputs go.
    """

    model: torch.nn.Module
    processor: ProcessorMixin
    sampling: Sampling
    loss: Loss
    rewards: dict[str, Reward]
    pair_rewards: tuple[float, float]
    device: torch.device

    def rule(self) -> SamplingRule:
        """The rollout's sampling rule (`settings.Sampling`): the sampling settings and no other logits processor,
        the image placeholders suppressed, every end id of the checkpoint."""
        hp = self.sampling
        return SamplingRule.of(self.model, self.processor, hp.temperature, hp.top_k, hp.top_p)

    def encode(self, records: list[dict]) -> prefix.Prompts:
        """The records' prompts, tokenized once, with one vision-tower call over their images (share_prefix)."""
        return prefix.encode(
            self.model,
            self.processor,
            [r["question"] for r in records],
            [r["image"] for r in records],
            [r.get("id") for r in records],
        )

    def sampled_records(self, batch: dict) -> list[dict]:
        """The records the policy samples for: the online prompts, and under `mixed_groups` the pairs' too."""
        return batch["online"] + (batch["offline"] if self.loss.offline_as == "mixed_groups" else [])

    @torch.no_grad()
    def sample(self, records: list[dict], prompts: prefix.Prompts | None = None) -> Drawn:
        """G sampled completions per record: (records repeated G times, token ids, texts), prompt-major.

        With `prompts` (the records' prompts, already encoded) each prompt is prefilled once for its samples;
        without, `generate` runs on copies of each prompt. Same rule, same draws for the same random state. With
        `perturbed_k: k`, the last k of each group are drawn from the record's perturbed image (`perturb`).
        """
        if not records:
            return [], [], []
        g, k = self.sampling.group_size, self.sampling.perturbed_k
        self.model.eval()
        try:
            completions = self._draw(records, prompts, g - k)
            if k:
                images = self.perturb(records)
                moved = [dict(r, image=im) for r, im in zip(records, images)]
                extra = self._draw(moved, self.encode(moved) if prompts is not None else None, k)
                completions = [
                    c
                    for i in range(len(records))
                    for c in completions[i * (g - k) : (i + 1) * (g - k)] + extra[i * k : (i + 1) * k]
                ]
        finally:
            self.model.train()
        texts = self.processor.batch_decode(completions, skip_special_tokens=True)
        return [r for r in records for _ in range(g)], completions, texts

    def _draw(self, records: list[dict], prompts: prefix.Prompts | None, n: int) -> list[list[int]]:
        """n completions per record under the rollout's rule, from `prompts` (one prefill each) or `generate`."""
        hp, rule = self.sampling, self.rule()
        if prompts is not None:
            return prefix.sample(self.model, prompts, n, hp.max_new_tokens, rule)
        batch = encode_prompts(
            self.processor,
            [r["question"] for r in records],
            [r["image"] for r in records],
            record_ids=[r.get("id") for r in records],
        ).to(self.device)
        return sampling.generate(self.model, batch, n, hp.max_new_tokens, rule)

    def perturb(self, records: list[dict]) -> list[Image.Image]:
        """Each record's image, perturbed by PGD against the current policy and rounded to an 8-bit picture.

        Untargeted: `sampling.perturb_steps` signed-gradient steps of 2.5 x epsilon / steps (so that the steps
        together can cross the ball from any start) that push down the log-likelihood of the record's
        ground-truth `answer` to its question, within an L-inf ball of `sampling.perturb_epsilon` / 255 around the
        image the model sees (the processor's resized one, which is also the size of the picture returned). The
        random start comes from torch's global generator, which the module seeds per step, so a resumed run
        repeats the perturbation. No weight changes: the gradient is taken for the pixels only.
        """
        hp, codec = self.sampling, PixelCodec.from_processor(self.processor)
        batch = encode_prompts(self.processor, [r["question"] for r in records], [r["image"] for r in records])
        raw, sizes = pad_stack(codec.raw_images(batch))
        raw = to_uint8_grid(raw.to(self.device), raw.to(self.device), 0.0)  # the decoded 8-bit image, exactly
        eps, step = hp.perturb_epsilon / 255, 2.5 * hp.perturb_epsilon / 255 / hp.perturb_steps
        objective = answer_loglik(self.model, self.processor, codec, records, sizes)
        valid = None if sizes is None else valid_pixels(raw, sizes)
        with torch.enable_grad():
            result = pgd(objective, raw, eps, step, hp.perturb_steps, early_stop=False, valid=valid)
        pictures = [to_pil(x) for x in unpad(to_uint8_grid(result.images, raw, eps), sizes)]
        # The sampling pass reads the pictures through the processor again: its resize must keep their size, as
        # it does for a picture it has already resized unless its pixel budget is too narrow for that.
        again = codec.raw_images(encode_prompts(self.processor, [r["question"] for r in records], pictures))
        if [x.shape for x in again] != [x.shape for x in unpad(raw, sizes)]:
            raise ValueError(
                "sampling.perturbed_k: the processor resizes the perturbed pictures again (its min_pixels / "
                "max_pixels budget does not keep the size of an image it resized), so they would leave the budget"
            )
        return pictures

    def score(self, batch: dict, drawn: Drawn, prompts: prefix.Prompts | None = None) -> Scored:
        """The batch's rows, rewards and advantages, given what `sample` drew for `sampled_records(batch)`.

        `prompts` are the step's distinct prompts (online, then offline), kept for the log-prob passes."""
        offline, scale_std = batch["offline"], self.loss.divides_by_std
        g, k = self.sampling.group_size, self.sampling.perturbed_k
        records, ids, texts = (list(x) for x in drawn)
        kinds = (["clean"] * (g - k) + ["perturbed"] * k) * (len(records) // g)
        sizes = [g] * (len(records) // g)
        mixed = self.loss.offline_as == "mixed_groups"
        if mixed and offline:  # each pair's chosen and rejected answers join the group of its record's samples
            records, ids, texts, kinds, sizes = self._mixed(offline, records, ids, texts, kinds)
        n_online = len(records)
        on_rewards, parts = (
            ([], {}) if not records else compose(self.rewards, [r["question"] for r in records], texts, records)
        )
        rewards = torch.tensor(on_rewards, dtype=torch.float32)
        advantages = grouped_advantages(rewards, sizes, scale_std)
        if offline and not mixed:  # each pair a group of two, with the fixed pair rewards
            pair_texts = [t for r in offline for t in (r["answer"], r["rejected"])]
            records, texts = records + [r for r in offline for _ in range(2)], texts + pair_texts
            ids = ids + answer_token_ids(self.processor, pair_texts)
            pairs = offline_pair_rewards(len(offline), *self.pair_rewards)
            rewards = torch.cat([rewards, pairs.flatten()])
            advantages = torch.cat([advantages, group_advantages(pairs, scale_std).flatten()])
            sizes = sizes + [2] * len(offline)
        return Scored(
            records=records,
            texts=texts,
            ids=ids,
            rewards=rewards,
            advantages=advantages,
            parts=parts,
            n_online=n_online,
            sizes=sizes,
            prompts=prompts,
            kinds=kinds,
        )

    def _mixed(self, pairs: list[dict], records: list, ids: list, texts: list, kinds: list) -> tuple:
        """(records, ids, texts, kinds, group sizes) with each pair's chosen and rejected answers after the G
        samples of its record; the pairs' records are the last ones `sampled_records` gives."""
        g, rows = self.sampling.group_size, list(zip(records, ids, texts, kinds))
        first = len(rows) - g * len(pairs)  # the online prompts' rows come first
        out = rows[:first]
        for j, pair in enumerate(pairs):
            chosen, rejected = answer_token_ids(self.processor, [pair["answer"], pair["rejected"]])
            out += rows[first + j * g : first + (j + 1) * g]
            out += [(pair, chosen, pair["answer"], "chosen"), (pair, rejected, pair["rejected"], "rejected")]
        records, ids, texts, kinds = (list(x) for x in zip(*out))
        return records, ids, texts, kinds, [g] * (first // g) + [g + 2] * len(pairs)
