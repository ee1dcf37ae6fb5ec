"""The base model shipped inside the package: packed small, unpacked exactly, used only for its own config, and
as skilled as its record says."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_warmstart import small  # the warm-start tests' tiny build
from transformers import AutoModelForImageTextToText

from mbpo_lit.testbed import shipped
from mbpo_lit.testbed.base_model import WarmStartConfig, build_base_model, skills
from mbpo_lit.testbed.tiny import TinySpec, write_tiny_checkpoint
from mbpo_lit.vlm.policy import ModelConfig, load_policy


def test_pack_keeps_every_weight_within_half_a_step_of_its_row_and_unpacks_to_a_loadable_checkpoint(tmp_path):
    src = write_tiny_checkpoint("qwen2_5_vl", tmp_path / "src", TinySpec())
    packed = shipped.pack_checkpoint(src, tmp_path / "packed")
    size = (packed / shipped.PACKED).stat().st_size
    assert size < 0.3 * (src / "model.safetensors").stat().st_size  # int8 against float32, plus the scales
    out = shipped.unpack_checkpoint(packed, tmp_path / "out")
    a = AutoModelForImageTextToText.from_pretrained(src).state_dict()
    b = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert a.keys() == b.keys()
    for name, w in a.items():
        if w.ndim < 2:
            assert torch.equal(w, b[name]), name  # vectors are stored as they are
            continue
        rows = w.reshape(w.shape[0], -1)
        step = rows.abs().amax(dim=1, keepdim=True) / 127
        err = (rows - b[name].reshape(rows.shape)).abs()
        assert (err <= step * (0.5 + 1e-5)).all(), name  # half a step of rounding, no more


def test_unpack_refuses_a_packed_file_with_a_missing_tensor(tmp_path):
    src = write_tiny_checkpoint("qwen2_5_vl", tmp_path / "src", TinySpec())
    packed = shipped.pack_checkpoint(src, tmp_path / "packed")
    state = load_file(str(packed / shipped.PACKED))
    victim = next(k for k in state if k.endswith("norm.weight"))
    del state[victim]
    save_file(state, str(packed / shipped.PACKED))
    with pytest.raises(RuntimeError, match="does not match its config"):
        shipped.unpack_checkpoint(packed, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-made under the final name


def test_a_shipped_build_is_unpacked_for_its_own_config_and_any_other_config_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED", tmp_path / "package")
    built = build_base_model(small(tmp_path / "a", ship=True), progress=False, evaluate_n=2)
    info = shipped.shipped_info()
    assert (
        info["key"] == small(tmp_path).key()
        and info["skills_float32"] == json.loads((built / "warmstart.json").read_text())["skills"]
    )
    got = build_base_model(small(tmp_path / "b"), progress=False)  # same config, another cache: unpacked
    assert not (got.parent / "init").exists()  # nothing trained
    w0 = AutoModelForImageTextToText.from_pretrained(built).state_dict()
    w1 = AutoModelForImageTextToText.from_pretrained(got).state_dict()
    assert all(torch.allclose(w0[k], w1[k], atol=0.05 * w0[k].abs().max().item() + 1e-6) for k in w0)
    assert json.loads((got / "warmstart.json").read_text())["key"] == info["key"]
    trained = build_base_model(small(tmp_path / "c", steps=3), progress=False, evaluate_n=2)  # another key
    assert (trained.parent / "init").is_dir()
    rebuilt = build_base_model(small(tmp_path / "d", from_shipped=False), progress=False, evaluate_n=2)
    assert (rebuilt.parent / "init").is_dir()  # asked to train, it trains


@pytest.mark.slow
def test_the_shipped_base_model_is_the_default_build_small_and_as_skilled_as_recorded(tmp_path):
    """The default config's build ships; unpacked, it reproduces the skills table it records, which meets the
    testbed's bars: it sees (existence), answers yes and no alike, and leans on the colour prior."""
    info = shipped.shipped_info()
    assert info is not None and info["key"] == WarmStartConfig().key()
    assert sum(f.stat().st_size for f in shipped.SHIPPED.iterdir()) <= 5 * 2**20
    path = shipped.unpack_checkpoint(shipped.SHIPPED, tmp_path / "model")
    policy = load_policy(ModelConfig(str(path), precision="fp32", quantization="none", lora=None, device="cpu"))
    n = info["eval_records_per_split"]
    table = skills(policy.model.eval(), policy.processor, WarmStartConfig().world, n, progress=False)
    recorded = info["skills"]
    assert table["one_object_shape"] == pytest.approx(recorded["one_object_shape"], abs=0.02)
    for split in ("eval_in_prior", "eval_counter_prior"):
        for k, v in recorded[split].items():
            assert table[split][k] == pytest.approx(v, abs=0.02), (split, k)
        assert table[split]["existence"] >= 0.85
        assert 0.4 <= table[split]["existence_yes_ratio"] <= 0.6
    assert table["eval_in_prior"]["attribute"] >= 0.95 and table["eval_counter_prior"]["attribute"] <= 0.55
