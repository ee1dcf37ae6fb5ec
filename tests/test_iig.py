"""Image Information Gain on a tiny real model."""

import numpy as np
import pytest
import torch
from PIL import Image

from mbpo_lit.vlm.iig import image_information_gain, neutral_image
from mbpo_lit.vlm.logprobs import answer_logprobs
from mbpo_lit.vlm.policy import ModelConfig, load_policy


@pytest.fixture(scope="module")
def policy(tiny_path):
    return load_policy(ModelConfig(str(tiny_path), precision="fp32", quantization="none", lora=None, device="cpu"))


def noisy(seed):
    return Image.fromarray((np.random.default_rng(seed).random((56, 56, 3)) * 255).astype("uint8"))


Q = ["What color is the circle?", "Is there a star in the image?", "How many objects are there?"]
A = ["red", "no", "3"]


def test_iig_is_the_log_likelihood_difference(policy):
    imgs = [noisy(i) for i in range(3)]
    gain = image_information_gain(policy.model, policy.processor, Q, A, imgs, baseline="none", batch_size=2)
    with torch.no_grad():
        with_img, mask = answer_logprobs(policy.model, policy.processor, Q, A, imgs)
        without, _ = answer_logprobs(policy.model, policy.processor, Q, A, None)
    expected = with_img.sum(1) - without.sum(1)
    assert torch.allclose(gain.sum, expected, atol=1e-5)
    assert torch.allclose(gain.mean, expected / mask.sum(1), atol=1e-5)
    assert (gain.sum.abs() > 0).all()


def test_neutral_baseline_of_a_neutral_image_is_zero(policy):
    grey = neutral_image(noisy(0))
    gain = image_information_gain(policy.model, policy.processor, Q, A, [grey] * 3, baseline="neutral")
    assert torch.allclose(gain.sum, torch.zeros(3), atol=1e-5)
    other = image_information_gain(policy.model, policy.processor, Q, A, [noisy(1)] * 3, baseline="neutral")
    assert (other.sum.abs() > 1e-4).all()


def test_batching_does_not_change_iig(policy):
    imgs = [noisy(i) for i in range(3)]
    batched = image_information_gain(policy.model, policy.processor, Q, A, imgs, batch_size=3)
    single = [
        image_information_gain(policy.model, policy.processor, [q], [a], [im]).sum for q, a, im in zip(Q, A, imgs)
    ]
    assert torch.allclose(batched.sum, torch.cat(single), atol=1e-4)


def test_bad_baseline_is_named(policy):
    with pytest.raises(ValueError, match="baseline='blank'"):
        image_information_gain(policy.model, policy.processor, Q, A, [noisy(0)] * 3, baseline="blank")
