"""The embedded default's base model, shipped inside the package so no one waits for it to train.

Building the biased base model (testbed/base_model/) takes longer on two CPU cores than the whole default run
may take (results/base-model.md). So the default build is also shipped here, small: every weight matrix stored
as int8 with one float32 scale per row (absmax rounding, a quarter of float32's size),
beside the checkpoint's config, tokenizer and processor files and the build's `warmstart.json`, whose skills
table was measured on these int8 weights after unpacking, not on the float32 ones they came from.

`build_base_model` uses it when the shipped config's key is the requested one (`WarmStartConfig.from_shipped`),
writing a regular float32 Hugging Face checkpoint under `runs/base/` in a few seconds; any other config trains.
The command that rebuilds and re-ships it:

    python -m mbpo_lit base-model --from_shipped false --ship true
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

SHIPPED = Path(__file__).parent / "base"
PACKED = "model.int8.safetensors"
_SCALE = ".__scale__"  # suffix of a packed matrix's per-row scales


def pack_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every floating tensor of two or more dimensions as int8 rows plus one float32 scale per row (its absmax
    / 127); vectors (norms, biases) stay float32, they are a rounding error of the size and carry the scales of
    whole layers."""
    out = {}
    for name, t in state.items():
        t = t.detach().float().cpu()
        if t.ndim < 2:
            out[name] = t.contiguous()
            continue
        rows = t.reshape(t.shape[0], -1)
        scale = (rows.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-12)
        out[name] = torch.round(rows / scale).to(torch.int8).reshape(t.shape).contiguous()
        out[name + _SCALE] = scale.squeeze(1)
    return out


def unpack_state(packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The float32 state dict of `pack_state`'s output."""
    out = {}
    for name, t in packed.items():
        if name.endswith(_SCALE):
            continue
        if t.dtype == torch.int8:
            scale = packed[name + _SCALE].float()
            t = (t.reshape(t.shape[0], -1).float() * scale[:, None]).reshape(t.shape)
        out[name] = t
    return out


def pack_checkpoint(model_dir: str | Path, out: str | Path) -> Path:
    """Write `model_dir` (a float32 checkpoint directory) to `out` with its weights packed; returns `out`."""
    model_dir, out = Path(model_dir), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model_dir, tmp, ignore=shutil.ignore_patterns("*.safetensors", "warmstart.json"))
    save_file(pack_state(load_file(str(model_dir / "model.safetensors"))), str(tmp / PACKED))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def unpack_checkpoint(packed_dir: str | Path, out: str | Path) -> Path:
    """Write the packed checkpoint at `packed_dir` to `out` as a regular float32 checkpoint (atomically)."""
    from transformers import AutoModelForImageTextToText

    packed_dir, out = Path(packed_dir), Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(packed_dir, tmp, ignore=shutil.ignore_patterns(PACKED))
    # the tensors under their names on disk, as save_pretrained wrote them
    save_file(unpack_state(load_file(str(packed_dir / PACKED))), str(tmp / "model.safetensors"), {"format": "pt"})
    _, loading = AutoModelForImageTextToText.from_pretrained(tmp, output_loading_info=True)
    # a shipped file that lacks or adds a tensor is a broken ship, not something to paper over
    wrong = {k: v for k, v in loading.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{packed_dir / PACKED} does not match its config: {wrong}")
    tmp.rename(out)
    return out


def shipped_info(directory: Path | None = None) -> dict | None:
    """The shipped build's warmstart.json (config, key, skills), or None if nothing is shipped."""
    f = (directory or SHIPPED) / "warmstart.json"
    return json.loads(f.read_text()) if f.is_file() else None
