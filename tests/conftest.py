"""Shared fixtures: tiny real checkpoints of every supported architecture, written once per test session."""

import os

# No hub is reachable here: make every Hugging Face library fail fast instead of retrying the network. The
# library itself never sets these (a user with a network must be able to download hub ids).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from mbpo_lit.testbed.tiny import ARCHS, ensure_tiny_checkpoint  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny")


@pytest.fixture(scope="session")
def tiny_pairs(tiny_root, tmp_path_factory):
    """(tiny Qwen2.5-VL checkpoint, directory of 4 pairs mined from it): inputs of short fits."""
    from mbpo_lit.mining import MineConfig, mine_pairs
    from mbpo_lit.testbed.world_source import WorldSource

    path = str(ensure_tiny_checkpoint("qwen2_5_vl", tiny_root))
    out = tmp_path_factory.mktemp("pairs")
    pairs = mine_pairs(
        MineConfig(
            out=str(out), model=path, source=WorldSource(["train"], 4), n=4, batch_size=4, steps=1, iig_filter="none"
        ),
        progress=False,
    )
    return path, str(pairs)


@pytest.fixture(scope="session", params=ARCHS)
def tiny_path(request, tiny_root):
    """Path of a tiny checkpoint, once per architecture (tests using it run for each)."""
    return ensure_tiny_checkpoint(request.param, tiny_root)


@pytest.fixture(scope="session")
def photos():
    """Real photographs of mixed sizes and aspect ratios (scikit-image's samples), shrunk so that the tiny
    models stay fast: 160x160, 160x107, 160x106 and 160x107 pixels (width x height)."""
    from PIL import Image
    from skimage import data

    images = [Image.fromarray(getattr(data, name)()) for name in ("astronaut", "coffee", "chelsea", "rocket")]
    for im in images:
        im.thumbnail((160, 160))
    return images


# Fixtures that build or load a model: a test that uses one (directly or through another fixture) is end to end.
MODEL_FIXTURES = {"tiny_root", "biased_model"}


def pytest_collection_modifyitems(config, items):
    """Mark the slow tests, so that `python -m pytest -m "not slow"` is the quick subset (maths, sources, CLI
    errors, layout): every test that loads a model through a fixture, every notebook, and the tests marked
    `@pytest.mark.slow` by hand (those that load a model themselves or run a command in a subprocess)."""
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) or item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
