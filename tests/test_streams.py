"""The two streams weighed apart (`loss.streams: separate`) and the bounded DPO offline term, against values and
gradients computed by hand; "joint" is `grpo_loss` over all rows, as before."""

import math

import pytest
import torch

from mbpo_lit.core.grpo import grpo_loss, k3_kl
from mbpo_lit.core.streams import dpo_pair_loss, stream_loss

# Rows: two online completions (one group), then one offline pair (chosen, rejected). Widths 2; row 1 and 3 have
# one token.
MASK = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.float32)
ADV = torch.tensor([1.0, -1.0, 0.7, -0.7])


def logp_leaf():
    return torch.tensor([[-0.5, -0.5], [-1.0, 0.0], [-0.5, -0.5], [-3.0, 0.0]], requires_grad=True)


def grad_of(loss, logp):
    (g,) = torch.autograd.grad(loss, logp)
    return g * MASK


def test_joint_averages_every_row_together():
    logp = logp_leaf()
    parts, _ = stream_loss(logp, logp.detach(), ADV, MASK, None, n_online=2)
    # mu = 1: ratio 1, d(-adv x ratio)/dlogp = -adv, over 4 sequences of len_i tokens each ("grpo" aggregation)
    want = torch.tensor([[-1 / 8, -1 / 8], [1 / 4, 0], [-0.7 / 8, -0.7 / 8], [0.7 / 4, 0]])
    torch.testing.assert_close(grad_of(parts.loss, logp), want)


def test_separate_keeps_the_online_term_whatever_the_offline_rows_and_weighs_the_offline_one():
    logp = logp_leaf()
    parts, terms = stream_loss(logp, logp.detach(), ADV, MASK, None, n_online=2, streams="separate", offline_weight=0.5)
    # online over its 2 sequences; offline over its 2, times 0.5
    want = torch.tensor([[-1 / 4, -1 / 4], [1 / 2, 0], [-0.5 * 0.7 / 4, -0.5 * 0.7 / 4], [0.5 * 0.7 / 2, 0]])
    torch.testing.assert_close(grad_of(parts.loss, logp), want)
    assert set(terms) == {"online/policy_loss", "offline/policy_loss"}
    alone = logp_leaf()
    online_only, _ = stream_loss(alone[:2], alone[:2].detach(), ADV[:2], MASK[:2], None, n_online=2, streams="separate")
    torch.testing.assert_close(grad_of(online_only.loss, alone)[:2], want[:2])


def test_the_dpo_term_by_hand():
    logp = logp_leaf()[2:]
    ref = torch.tensor([[-1.0, -1.0], [-2.0, 0.0]])
    # margin = (chosen -1 - ref -2) - (rejected -3 - ref -2) = 2; beta 0.5: -log sigmoid(1)
    loss = dpo_pair_loss(logp, ref, MASK[2:], beta=0.5)
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)))
    s = 0.5 / (1 + math.e)  # beta x sigmoid(-beta x margin): down on the chosen tokens' loss, up on the rejected's
    leaf = logp_leaf()
    (g,) = torch.autograd.grad(dpo_pair_loss(leaf[2:], ref, MASK[2:], beta=0.5), leaf)
    torch.testing.assert_close(g[2:] * MASK[2:], torch.tensor([[-s, -s], [s, 0.0]]))


def test_separate_with_dpo_and_no_offline_kl():
    logp = logp_leaf()
    ref = torch.tensor([[-0.4, -0.7], [-1.2, 0.0], [-1.0, -1.0], [-2.0, 0.0]])
    kw = {"streams": "separate", "offline_loss": "dpo", "dpo_beta": 0.5, "beta": 0.1, "offline_weight": 2.0}
    parts, terms = stream_loss(logp, logp.detach(), ADV, MASK, ref, n_online=2, offline_kl=False, **kw)
    kl_online = ((k3_kl(logp, ref) * MASK)[:2].sum(1) / MASK[:2].sum(1)).mean()  # online rows only
    assert parts.kl.item() == pytest.approx(kl_online.item())
    dpo = math.log1p(math.exp(-1.0))
    assert terms["offline/policy_loss"].item() == pytest.approx(dpo)
    assert parts.loss.item() == pytest.approx(0.0 + 2.0 * dpo + 0.1 * kl_online.item())
    with_kl, _ = stream_loss(logp, logp.detach(), ADV, MASK, ref, n_online=2, offline_kl=True, **kw)
    kl_offline = ((k3_kl(logp, ref) * MASK)[2:].sum(1) / MASK[2:].sum(1)).mean()
    assert with_kl.kl.item() == pytest.approx(kl_online.item() + 2.0 * kl_offline.item())


def test_joint_with_the_defaults_is_grpo_loss_over_all_rows():
    logp, ref = logp_leaf(), torch.full((4, 2), -0.8)
    parts, _ = stream_loss(logp, logp.detach(), ADV, MASK, ref, n_online=2, beta=0.04, aggregation="bnpo")
    same = grpo_loss(logp, logp.detach(), ADV, MASK, ref, beta=0.04, aggregation="bnpo")
    assert parts.loss.item() == pytest.approx(same.loss.item()) and parts.kl.item() == pytest.approx(same.kl.item())


def test_combinations_that_do_not_exist_are_refused():
    logp = logp_leaf()
    with pytest.raises(ValueError, match="offline_loss='dpo' needs streams='separate'"):
        stream_loss(logp, logp.detach(), ADV, MASK, logp.detach(), n_online=2, offline_loss="dpo")
    with pytest.raises(ValueError, match="'dapo' has no such count"):
        stream_loss(logp, logp.detach(), ADV, MASK, None, n_online=2, streams="separate", normalizer=6.0)
    with pytest.raises(ValueError, match="needs ref_logp"):
        stream_loss(logp, logp.detach(), ADV, MASK, None, n_online=2, streams="separate", offline_loss="dpo")


def test_the_modules_step_under_separate_streams_and_dpo_is_the_loss_assembled_by_hand(tiny_pairs):
    """`training_step` with `streams: separate`, `offline_loss: dpo` (and beta 0, so only DPO asks for the
    reference pass) applies the gradient of GRPO's online term + 0.5 x DPO's term on the offline pairs."""
    import dataclasses

    from test_module import WORLD, gradients_at_each_step, unquantized_module

    from mbpo_lit.testbed.questions import build_records
    from mbpo_lit.vlm.policy import reference_mode, trainable_parameters

    path, _ = tiny_pairs
    m = unquantized_module(path, {"streams": "separate", "offline_loss": "dpo", "offline_weight": 0.5})
    recs = build_records(WORLD, "train", 3)
    pairs = [dict(r, rejected=next(c for c in WORLD.colors if c != r["answer"])) for r in recs]
    torch.manual_seed(0)
    scored = m.score({"online": recs[:1], "offline": pairs[1:3]})
    n = scored.n_online
    scored = dataclasses.replace(scored, prompts=None, advantages=torch.linspace(-1.0, 1.0, len(scored.ids)))
    (got,) = gradients_at_each_step(m, [scored])

    with reference_mode(m.model):
        ref, _ = m.logprobs(scored)
    logp, mask = m.logprobs(scored)
    online = grpo_loss(logp[:n], logp[:n].detach(), scored.advantages[:n], mask[:n]).loss
    offline = dpo_pair_loss(logp[n:], ref[n:], mask[n:], beta=0.1)
    assert offline.item() != pytest.approx(math.log(2))  # the adapters moved the policy off the reference
    want = torch.autograd.grad(online + 0.5 * offline, list(trainable_parameters(m.model).values()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-5)
