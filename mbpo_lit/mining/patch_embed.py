"""A patch embedding as one matrix product: the same function as the vision tower's strided convolution, faster.

Qwen-VL's vision tower embeds each patch with a `Conv3d` whose kernel is the patch itself (stride = kernel, no
padding), applied to a batch of single patches: mathematically one matrix product, patches x weights. On the CPU,
oneDNN's 3-D convolution computes it about 3 times slower forward and 15 times slower backward (the input
gradient PGD needs) than the matrix product (16 images of 112x112: 14 and 70 ms against 4 and 4 ms, 1 thread), and
PGD runs it forward and backward at every step. `matmul_patch_embeddings` swaps the convolution's forward for the
product while the miner runs; the results differ by float rounding only (about 1e-6).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
