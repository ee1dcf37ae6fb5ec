"""How a policy draws its tokens: one sampling rule for rollouts, evaluation and mining.

`SamplingRule` (see `train.settings.Sampling` for the rule in words) holds the logits processors (transformers'
own classes), the end ids, the pad id and the temperature. Two ways draw by it: `generate` here, transformers'
`generate` on one row per completion, and `shared_prefix.sample`, from one prefill per prompt; for the same
random state they draw the same tokens. Both run on a clean generation config, so that the checkpoint's own
sampling knobs (e.g. Qwen's repetition penalty) apply in neither: an answer is the model's own distribution on
every checkpoint. `answer_texts` is how the evaluator, validation and mining read a model's answer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import torch
from peft import PeftModel
from transformers import (
    BatchFeature,
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from mbpo_lit.vlm.chat import vision_token_ids


def unwrap(model: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The transformers `...ForConditionalGeneration`, peft's wrapper removed."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def end_token_ids(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """Every id that ends a completion: the tokenizer's end-of-turn token and the checkpoint's generation-config
    end ids (Qwen2.5-VL-Instruct's are `<|im_end|>` and `<|endoftext|>`), tokenizer's first."""
    configured = unwrap(model).generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return tuple(dict.fromkeys([tokenizer.eos_token_id, *configured]))


@dataclass(frozen=True)
class SamplingRule:
    """How a rollout draws its tokens, in either layout (see `train.settings.Sampling` for the rule in words).

    `temperature` 0 is greedy decoding (argmax after suppression). `suppress` lists tokens never drawn (the
    image placeholders, `chat.vision_token_ids`); `end_ids` end a completion (`end_token_ids`); `pad_id` fills
    the rows that have ended while the others go on (never part of a completion).
    """

    end_ids: tuple[int, ...]
    pad_id: int
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    suppress: tuple[int, ...] = ()

    @classmethod
    def of(
        cls, model: PreTrainedModel | PeftModel, processor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0
    ) -> SamplingRule:
        """The rule for `model` and its processor: its end ids, its pad token, its image placeholders suppressed;
        greedy at the default temperature 0."""
        return cls(
            end_ids=end_token_ids(model, processor.tokenizer),
            pad_id=processor.tokenizer.pad_token_id,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            suppress=tuple(vision_token_ids(processor)),
        )

    @cached_property
    def processors(self) -> LogitsProcessorList:
        """The logits processors of a draw, in `generate`'s order; no others apply (none reads the ids)."""
        out = LogitsProcessorList()
        if self.suppress:
            out.append(SuppressTokensLogitsProcessor(list(self.suppress)))
        if self.temperature > 0:  # the warpers sample; greedy decoding takes the argmax of the suppressed logits
            if self.temperature != 1.0:
                out.append(TemperatureLogitsWarper(self.temperature))
            if self.top_k > 0:
                out.append(TopKLogitsWarper(self.top_k))
            if self.top_p < 1.0:
                out.append(TopPLogitsWarper(self.top_p))
        return out

    def generation_config(self, max_new_tokens: int, num_return_sequences: int = 1) -> GenerationConfig:
        """The rule as a generation config for `generate`, every sampling knob explicit (top_k 0, not 50)."""
        sampled = self.temperature > 0
        return GenerationConfig(
            do_sample=sampled,
            temperature=self.temperature if sampled else None,
            top_k=self.top_k if sampled else None,
            top_p=self.top_p if sampled else None,
            repetition_penalty=1.0,
            suppress_tokens=list(self.suppress) or None,
            eos_token_id=list(self.end_ids),
            pad_token_id=self.pad_id,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
        )

    def completions(self, ids: torch.Tensor) -> list[list[int]]:
        """`generate`'s new tokens -> completions: each row up to and including its first end id, or whole.

        A row without an end id reached `max_new_tokens` (generate stops early only when every row has ended),
        so every token of it was sampled, pad ids included: nothing is stripped.
        """
        ends = torch.isin(ids, torch.as_tensor(self.end_ids, device=ids.device))
        first = torch.where(ends.any(1), ends.int().argmax(1) + 1, ids.shape[1])
        return [row[:n] for row, n in zip(ids.tolist(), first.tolist())]

    def draw(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One token per row of [rows, vocab] logits: softmax over the processed logits, then one multinomial
        draw per row (`generate`'s sampling step), or the argmax at temperature 0."""
        scores = self.processors(None, logits.float())
        if self.temperature == 0:
            return scores.argmax(-1)
        return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(-1)


@contextlib.contextmanager
def _only(model: PreTrainedModel | PeftModel, config: GenerationConfig) -> Iterator[None]:
    """Make `config` the model's generation config for a while. transformers fills every unset field of the
    config passed to `generate` from the model's own, so the checkpoint's knobs are moved out of the way."""
    base = unwrap(model)
    saved = base.generation_config
    base.generation_config = config
    try:
        yield
    finally:
        base.generation_config = saved


@torch.no_grad()
def generate(
    model: PreTrainedModel | PeftModel, batch: BatchFeature, group_size: int, max_new_tokens: int, rule: SamplingRule
) -> list[list[int]]:
    """`group_size` completions per prompt of `batch` (built by `chat.encode_prompts`) by transformers'
    `generate`, one row per completion: the layout without a shared prefix. Same rule and, for the same random
    state, the same draws as `sample`; rows are prompt-major."""
    sampled = rule.temperature > 0  # greedy decoding gives each prompt's G completions at once
    config = rule.generation_config(max_new_tokens, group_size if sampled else 1)
    with _only(model, config):
        ids = model.generate(**batch, generation_config=config)
    completions = rule.completions(ids[:, batch["input_ids"].shape[1] :])
    return completions if sampled else [c for c in completions for _ in range(group_size)]


@torch.no_grad()
def answer_texts(
    model: PreTrainedModel | PeftModel, processor, batch: BatchFeature, max_new_tokens: int, rule: SamplingRule
) -> list[str]:
    """One decoded answer per prompt of `batch` under `rule` (greedy for `SamplingRule.of(model, processor)`):
    how the evaluator, validation and mining read a model's answer, with none of the checkpoint's own
    `generation_config` processors (a repetition penalty, say), the same on every checkpoint."""
    ids = generate(model, batch, 1, max_new_tokens, rule)
    return processor.batch_decode(ids, skip_special_tokens=True)
