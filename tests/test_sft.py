"""`loss.kind: sft`, the supervised reference line: one step's loss is the mean negative log-likelihood per token of
the batch's reference answers (offline chosen, online ground truth), computed here by hand from full logits, and
its gradient step makes those answers more likely; nothing is sampled."""

import pytest
import torch
from test_module import datamodule, module
from test_remine import trainer as quiet_trainer

from mbpo_lit.train.settings import Loss
from mbpo_lit.vlm.chat import answer_token_ids, append_completions, encode_prompts


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the adapter written at the end of a fit goes to tmp_path


def nll_by_hand(m, records) -> tuple[float, int]:
    """(sum of -log p(token) over every reference-answer token, token count), one record at a time, from the
    model's full logits (no padding, no logits_to_keep): log softmax of the logit before each answer token."""
    total, count = 0.0, 0
    with torch.no_grad():
        for r in records:
            ids = answer_token_ids(m.processor, [r["answer"]])
            batch, _ = append_completions(
                encode_prompts(m.processor, [r["question"]], [r["image"]]), ids, m.processor.tokenizer.pad_token_id
            )
            logits = m.model(**batch.to(m.device), use_cache=False).logits[0].float()
            n = len(ids[0])
            logp = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
            total -= logp.gather(1, torch.tensor(ids[0], device=logp.device)[:, None]).sum().item()
            count += n
    return total, count


def test_sft_loss_is_the_mean_nll_of_the_reference_answers_and_one_step_lowers_it(tiny_pairs, tmp_path):
    path, pairs = tiny_pairs
    m = module(path, loss={"kind": "sft", "beta": 0.0, "mu": 1}, optim={"lr": 1e-2})
    m.configure_model()
    dm = datamodule(pairs, offline_per_batch=2, online_per_batch=2)
    dm.setup("fit")
    batch = dm.train_set[0]  # the batch of the first step (drawn from (seed, 0))
    records = batch["online"] + batch["offline"]
    assert len(batch["online"]) == 2 and len(batch["offline"]) == 2
    before, tokens = nll_by_hand(m, records)

    trainer = quiet_trainer(tmp_path, 1, [])
    trainer.fit(m, dm)
    logged = trainer.logged_metrics
    assert logged["loss"].item() == pytest.approx(before / tokens, rel=1e-4)  # mean NLL per answer token
    assert logged["completion_length"].item() == pytest.approx(tokens / len(records))  # each record once: no G
    assert "kl" not in logged and "online/reward_mean" not in logged  # no rollout, no rewards
    after, _ = nll_by_hand(m, records)
    assert after < before  # the step made the reference answers more likely


def test_sft_refuses_the_grpo_only_settings():
    assert Loss(kind="sft").kind == "sft" and Loss().kind == "grpo"
    with pytest.raises(ValueError, match="loss.kind=sft with loss.beta=0.04"):
        Loss(kind="sft", beta=0.04)
    with pytest.raises(ValueError, match="loss.mu=2"):
        Loss(kind="sft", mu=2)
    with pytest.raises(ValueError, match="loss.kind='dpo'"):
        Loss(kind="dpo")
