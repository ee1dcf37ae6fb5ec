"""GRPO maths against hand-computed values, and the policy-gradient identity at mu = 1, beta = 0."""

import math

import pytest
import torch

from mbpo_lit.core.grpo import aggregate, group_advantages, grpo_loss, k3_kl, offline_pair_rewards


def test_advantages_centre_and_scale_within_groups():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]])
    assert torch.allclose(group_advantages(rewards, scale_std=False), torch.tensor([[0.5, -0.5, -0.5, 0.5], [0.0] * 4]))
    scaled = group_advantages(rewards, scale_std=True)
    assert torch.allclose(scaled[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (math.sqrt(1 / 3) + 1e-4))
    assert torch.equal(scaled[1], torch.zeros(4))  # no spread, no signal


def test_offline_pairs_reward_two_and_zero_give_plus_minus_one():
    rewards = offline_pair_rewards(3)
    assert rewards.tolist() == [[2.0, 0.0]] * 3
    assert torch.allclose(group_advantages(rewards, scale_std=False), torch.tensor([[1.0, -1.0]] * 3))
    assert torch.allclose(
        group_advantages(rewards, scale_std=True), torch.tensor([[1.0, -1.0]] * 3) / (math.sqrt(2) + 1e-4)
    )


def test_clipped_surrogate_against_hand_computed_values():
    logp = torch.log(torch.tensor([[0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.25, 0.5]]))  # ratios 2 and 1
    mask = torch.ones(1, 2)
    pos = grpo_loss(logp, old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.2)
    assert pos.loss.item() == pytest.approx(-(1.2 + 1.0) / 2)  # ratio 2 clipped to 1.2 for a positive advantage
    assert pos.clip_fraction.item() == pytest.approx(0.5) and pos.ratio_mean.item() == pytest.approx(1.5)
    neg = grpo_loss(logp, old, torch.tensor([-1.0]), mask, eps_low=0.2, eps_high=0.2)
    assert neg.loss.item() == pytest.approx((2.0 + 1.0) / 2)  # pessimistic: the unclipped -2 is kept
    assert neg.clip_fraction.item() == 0.0
    asym = grpo_loss(logp, old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.28)  # DAPO's clip-higher
    assert asym.loss.item() == pytest.approx(-(1.28 + 1.0) / 2)


def test_kl_term_is_k3_and_weighted_by_beta():
    logp = torch.log(torch.tensor([[0.5]]))
    ref = torch.log(torch.tensor([[0.25]]))
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    parts = grpo_loss(logp, logp.detach(), torch.tensor([0.0]), torch.ones(1, 1), ref_logp=ref, beta=0.1)
    assert parts.loss.item() == pytest.approx(0.1 * (0.5 + math.log(2) - 1))
    with pytest.raises(ValueError, match="beta != 0 needs ref_logp"):
        grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), beta=0.1)


def test_aggregations():
    per_token = torch.tensor([[1.0, 2.0, 5.0], [3.0, 7.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert aggregate(per_token, mask, "grpo").item() == pytest.approx((1.5 + 3.0) / 2)
    assert aggregate(per_token, mask, "bnpo").item() == pytest.approx(6.0 / 3)
    assert aggregate(per_token, mask, "dapo").item() == pytest.approx(6.0 / 3)  # no normalizer: this batch's tokens
    assert aggregate(per_token, mask, "dapo", normalizer=10).item() == pytest.approx(6.0 / 10)
    assert aggregate(per_token, mask, "dr_grpo", max_tokens=4).item() == pytest.approx(6.0 / 8)
    with pytest.raises(ValueError, match="'mean'"):
        aggregate(per_token, mask, "mean")
    with pytest.raises(ValueError, match="normalizer is the token count of a 'dapo' batch"):
        aggregate(per_token, mask, "bnpo", normalizer=10)


def test_dapo_normalises_over_the_accumulated_batch_and_bnpo_over_each_micro_batch():
    """Two micro-batches of 3 and 1 tokens: "dapo" is the token mean of all 4 tokens (as one batch of both),
    "bnpo" the mean of the two micro-batches' token means."""
    a, mask_a = torch.tensor([[1.0, 2.0], [3.0, 9.0]]), torch.tensor([[1, 1], [1, 0]])  # 6 over 3 tokens
    b, mask_b = torch.tensor([[10.0, 4.0]]), torch.tensor([[1, 0]])  # 10 over 1 token
    total = 3 + 1
    dapo = aggregate(a, mask_a, "dapo", normalizer=total) + aggregate(b, mask_b, "dapo", normalizer=total)
    assert dapo.item() == pytest.approx((6.0 + 10.0) / 4)
    both, mask_both = torch.cat([a, b]), torch.cat([mask_a, mask_b])
    assert aggregate(both, mask_both, "dapo").item() == pytest.approx(dapo.item())
    bnpo = (aggregate(a, mask_a, "bnpo") + aggregate(b, mask_b, "bnpo")) / 2
    assert bnpo.item() == pytest.approx((6.0 / 3 + 10.0 / 1) / 2)


def test_each_variant_of_the_loss_against_hand_computed_values():
    """Ratio 1 (mu = 1), beta = 0: the per-token term is -A_i; two sequences of 2 and 1 tokens, A = (1, 2)."""
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])

    def loss(how, **kw):
        return grpo_loss(logp, logp, torch.tensor([1.0, 2.0]), mask, aggregation=how, **kw).loss.item()

    assert loss("grpo") == pytest.approx((-1.0 - 2.0) / 2)  # mean of the per-sequence means (-1, -2)
    assert loss("bnpo") == pytest.approx((-1.0 - 1.0 - 2.0) / 3)  # token mean of this batch
    assert loss("dapo", normalizer=6) == pytest.approx(-4.0 / 6)  # token sum / the optimizer batch's 6 tokens
    assert loss("dapo") == pytest.approx(loss("bnpo"))
    assert loss("dr_grpo", max_tokens=5) == pytest.approx(-4.0 / (2 * 5))  # / (sequences x max tokens)


@pytest.mark.parametrize("aggregation", ["grpo", "bnpo", "dapo", "dr_grpo"])
def test_mu1_beta0_gradient_is_the_policy_gradient(aggregation):
    torch.manual_seed(0)
    logits = torch.randn(4, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (4, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0]])
    adv = torch.tensor([0.7, -1.2, 0.3, 0.0])

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    lp = logp()
    (grad,) = torch.autograd.grad(grpo_loss(lp, lp.detach(), adv, mask, aggregation=aggregation).loss, logits)
    # REINFORCE with the same normalisation: -sum_t A_i grad log p_it, reduced the same way.
    (expected,) = torch.autograd.grad(aggregate(-adv[:, None] * logp(), mask, aggregation), logits)
    assert torch.allclose(grad, expected, atol=1e-6)
