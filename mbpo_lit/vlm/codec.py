"""Pixel codec: a differentiable map between raw images in [0, 1] and each architecture's pixel inputs.

Adversarial mining perturbs the *image*, so the perturbation must live in raw pixel space: bounded by an
L-inf radius in /255 units, clamped to [0, 1], and savable as a picture, whatever the architecture does to
pixels afterwards. The processor (resize, rescale, normalise, patchify) is not differentiable, so:

    raw = codec.decode(processor(images=...)["pixel_values"])   # exact inverse of normalise + patchify
    pixel_values = codec.encode(raw + delta)                     # differentiable in delta

Resizing happens once, in the processor, before the attack: the attacked image is the resized one, which is
the image the model actually sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, ProcessorMixin


@dataclass
class PixelCodec:
    """Normalisation constants and patch layout of one processor.

    For Qwen-VL, `pixel_values` rows are flattened patches ordered (merge-block rows, merge-block cols,
    row-in-block, col-in-block), each patch laid out (channel, temporal, patch_row, patch_col); images of a
    batch are concatenated along rows, `image_grid_thw` saying how many belong to each. For LLaVA,
    `pixel_values` is a plain normalised [batch, 3, H, W] tensor.
    """

    mean: torch.Tensor  # [3]
    std: torch.Tensor  # [3]
    kind: str  # "qwen" or "llava"
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @classmethod
    def from_processor(cls, processor: ProcessorMixin) -> PixelCodec:
        ip = processor.image_processor
        mean = torch.tensor(ip.image_mean, dtype=torch.float32)
        std = torch.tensor(ip.image_std, dtype=torch.float32)
        if hasattr(ip, "merge_size"):
            return cls(mean, std, "qwen", ip.patch_size, ip.merge_size, ip.temporal_patch_size)
        return cls(mean, std, "llava")

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x).view(-1, 1, 1)) / self.std.to(x).view(-1, 1, 1)

    def _unnorm(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x).view(-1, 1, 1) + self.mean.to(x).view(-1, 1, 1)

    def encode(
        self, raw: list[torch.Tensor] | torch.Tensor, sizes: list[tuple[int, int]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw images ([3, H, W] each, values in [0, 1]) -> (pixel_values, image_grid_thw or None).

        A [batch, 3, H, W] tensor (images of one size, as PGD attacks them) is encoded in one set of tensor
        operations; a list may mix sizes and is encoded image by image. Both give the same values. With `sizes`
        (height, width per image), `raw` is a `pad_stack` of images of mixed sizes, each cropped back first.
        """
        if sizes is not None:
            return self.encode(unpad(raw, sizes))
        if self.kind == "llava":
            return (self._norm(raw) if torch.is_tensor(raw) else torch.stack([self._norm(x) for x in raw])), None
        if torch.is_tensor(raw) and raw.dim() == 4:
            rows = self._patchify(raw)
            n, _, h, w = raw.shape
            grid = torch.tensor([[1, h // self.patch_size, w // self.patch_size]] * n, device=raw.device)
            return rows, grid
        rows = [self._patchify(x[None]) for x in raw]
        grids = [[1, x.shape[1] // self.patch_size, x.shape[2] // self.patch_size] for x in raw]
        return torch.cat(rows), torch.tensor(grids, dtype=torch.long, device=rows[0].device)

    def _patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] raw images of one size -> their Qwen-VL pixel rows, image after image."""
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        n, c, h, w = x.shape
        gh, gw = h // p, w // p
        x = self._norm(x).reshape(n, c, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        # One still image fills every temporal slot of the patch (the processor repeats it).
        x = x.unsqueeze(6).expand(*x.shape[:6], t, p, p)
        return x.reshape(n * gh * gw, c * t * p * p)

    def decode(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Inverse of `encode`: pixel inputs -> raw images [3, H, W] in [0, 1] (first temporal slot)."""
        if self.kind == "llava":
            return [self._unnorm(x) for x in pixel_values]
        out, start = [], 0
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        for _, gh, gw in image_grid_thw.tolist():
            rows = pixel_values[start : start + gh * gw]
            start += gh * gw
            patches = rows.reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]
            x = patches.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)
            out.append(self._unnorm(x))
        return out

    def raw_images(self, batch: BatchFeature) -> list[torch.Tensor]:
        """The raw (resized) images of a processor batch, in [0, 1]."""
        return [x.clamp(0, 1) for x in self.decode(batch["pixel_values"].float(), batch.get("image_grid_thw"))]


def pad_stack(images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]] | None]:
    """Raw images of mixed sizes as one [batch, 3, H, W] tensor, each zero-padded at the bottom and right to the
    largest, and their (height, width); images of one size are stacked as they are, with sizes None."""
    sizes = [tuple(x.shape[1:]) for x in images]
    if len(set(sizes)) == 1:
        return torch.stack(images), None
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    out = images[0].new_zeros(len(images), 3, h, w)
    for i, x in enumerate(images):
        out[i, :, : x.shape[1], : x.shape[2]] = x
    return out, sizes


def unpad(batch: torch.Tensor, sizes: list[tuple[int, int]] | None) -> list[torch.Tensor] | torch.Tensor:
    """The images of a `pad_stack`, each cropped to its own size (the batch itself when sizes is None)."""
    return batch if sizes is None else [x[:, :h, :w] for x, (h, w) in zip(batch, sizes)]


def to_pil(raw: torch.Tensor) -> Image.Image:
    """A raw image tensor [3, H, W] in [0, 1] as an 8-bit RGB picture."""
    arr = (raw.detach().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def to_raw(image: Image.Image) -> torch.Tensor:
    """An RGB picture as a raw image tensor [3, H, W] in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
