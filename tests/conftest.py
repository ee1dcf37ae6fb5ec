"""Shared fixtures: tiny real checkpoints of every supported architecture, written once per test session."""

import os

# No hub is reachable here: make every Hugging Face library fail fast instead of retrying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from mbpo_lit.tiny import ARCHS, ensure_tiny_checkpoint  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session", params=ARCHS)
def tiny_path(request, tiny_root):
    """Path of a tiny checkpoint, once per architecture (tests using it run for each)."""
    return ensure_tiny_checkpoint(request.param, tiny_root)
