"""The vision tower's own functions computed faster while the miner runs: the same values, up to float rounding.

PGD runs Qwen-VL's vision tower forward and backward at every step, so two of its layers that suit a GPU but cost
a CPU dearly are computed another way for as long as a chunk is mined (`fast_vision`):

- **The patch embedding as one matrix product.** It is a `Conv3d` whose kernel is the patch itself (stride =
  kernel, no padding), applied to a batch of single patches: mathematically patches x weights. On the CPU, oneDNN's
  3-D convolution computes it about 3 times slower forward and 15 times slower backward (the input gradient PGD
  needs) than the matrix product (16 images of 112x112: 14 and 70 ms against 4 and 4 ms, 1 thread).
- **Windowed attention as one batched call.** The vision attention attends within windows (each image, or each
  window of an image) packed into one sequence; without flash attention, transformers computes each window with its
  own kernel call, forward and backward. Where every window has the same length (a batch of one image size), the
  windows are the rows of one batch and one call computes them all, through the model's configured attention
  function (`sdpa` or `eager`). Windows of several lengths keep the model's own loop.

The modules are as they were after.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


def is_patch_conv(module: nn.Module) -> bool:
    """Whether `module` is a convolution that only ever sees one patch per input: stride = kernel, no padding,
    dilation or groups (what Qwen-VL's `PatchEmbed.proj` is)."""
    if not isinstance(module, nn.Conv2d | nn.Conv3d):
        return False
    plain = all(p == 0 for p in module.padding) if not isinstance(module.padding, str) else False
    return (
        plain
        and tuple(module.stride) == tuple(module.kernel_size)
        and all(d == 1 for d in module.dilation)
        and module.groups == 1
    )


def patch_matmul(conv: nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for inputs of exactly one kernel each ([n, channels, *kernel] -> [n, out, 1, ...]) as a matrix
    product; any other input goes to the convolution itself."""
    if tuple(x.shape[2:]) != tuple(conv.kernel_size):
        return conv._conv_forward(x, conv.weight, conv.bias)
    weight = conv.weight.reshape(conv.out_channels, -1)
    out = x.reshape(x.shape[0], -1) @ weight.t()
    if conv.bias is not None:
        out = out + conv.bias
    return out.reshape(x.shape[0], conv.out_channels, *[1] * (x.dim() - 2))


def is_window_attention(module: nn.Module) -> bool:
    """Whether `module` is a Qwen-VL vision attention: a packed sequence's windows (`cu_seqlens`), a fused `qkv`
    projection and its modeling file's `apply_rotary_pos_emb_vision` and `eager_attention_forward`."""
    modeling = sys.modules.get(type(module).__module__)
    return (
        type(module).__name__.endswith("VisionAttention")
        and all(hasattr(modeling, f) for f in ("apply_rotary_pos_emb_vision", "eager_attention_forward"))
        and all(hasattr(module, a) for a in ("qkv", "proj", "num_heads", "scaling", "config"))
    )


def batched_window_attention(
    attn: nn.Module,
    hidden_states: torch.Tensor,
    cu_seqlens: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs,
) -> torch.Tensor:
    """The vision attention's forward with windows of one length attended as one batch ([windows, heads, length,
    head_dim]); other inputs, and flash attention (one varlen call already), go to the module's own forward."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    flash = "flash" in (attn.config._attn_implementation or "")  # transformers' own test: one varlen call already
    if len(set(lengths)) != 1 or flash or position_embeddings is None:
        return type(attn).forward(attn, hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs)
    n, length = hidden_states.shape[0], lengths[0]
    q, k, v = attn.qkv(hidden_states).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    modeling = sys.modules[type(attn).__module__]  # the model's own rotary embedding and eager attention
    q, k = modeling.apply_rotary_pos_emb_vision(q, k, *position_embeddings)
    q, k, v = (t.reshape(n // length, length, attn.num_heads, -1).transpose(1, 2) for t in (q, k, v))
    implementation = attn.config._attn_implementation
    eager = implementation in (None, "eager")
    attention = modeling.eager_attention_forward if eager else ALL_ATTENTION_FUNCTIONS[implementation]
    out = attention(attn, q, k, v, attention_mask=None, scaling=attn.scaling, dropout=0.0, is_causal=False)[0]
    return attn.proj(out.reshape(n, -1))  # [windows, length, heads, head_dim]: the packed order


@contextmanager
def matmul_patch_embeddings(model: nn.Module) -> Iterator[int]:
    """Every one-patch-per-input convolution of `model` computed as a matrix product for a while (yields how many);
    the modules are as they were after."""
    convs = [m for m in model.modules() if is_patch_conv(m)]
    for conv in convs:
        conv.forward = patch_matmul.__get__(conv)  # an instance attribute: the class's own forward stays
    try:
        yield len(convs)
    finally:
        for conv in convs:
            del conv.forward


@contextmanager
def fast_vision(model: nn.Module) -> Iterator[tuple[int, int]]:
    """`model`'s patch embeddings as matrix products and its windowed vision attention batched, for a while (yields
    how many of each); the modules are as they were after."""
    attns = [m for m in model.modules() if is_window_attention(m)]
    with matmul_patch_embeddings(model) as convs:
        for attn in attns:
            attn.forward = batched_window_attention.__get__(attn)
        try:
            yield convs, len(attns)
        finally:
            for attn in attns:
                del attn.forward
