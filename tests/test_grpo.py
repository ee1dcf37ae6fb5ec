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
    assert aggregate(per_token, mask, "dapo").item() == pytest.approx(6.0 / 3)
    assert aggregate(per_token, mask, "dr_grpo", max_tokens=4).item() == pytest.approx(6.0 / 8)
    with pytest.raises(ValueError, match="'mean'"):
        aggregate(per_token, mask, "mean")


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
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
