"""Differentiable siamese augmentation (DSA): one random transform applied alike to real and synthetic images.

Parameters are drawn once (`sample`) from a seeded generator and then applied (`apply`) to
any batch, so a real class batch and its synthetic counterpart see exactly the same
transform. Drawing does not look at the data, so it costs no privacy. For training on a
synthetic set, `sample(per_example=n)` draws an independent transform per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import torch
import torch.nn.functional as F


@dataclass
class AugmentParams:
    """One draw of transform parameters; tensors have one row per example, or one row shared by all."""

    affine: torch.Tensor  # [k, 2, 3] scale·rotation·flip + translation
    brightness: torch.Tensor  # [k]
    contrast: torch.Tensor  # [k]
    cutout: torch.Tensor  # [k, 2] centre of the cutout square, in [0, 1]


@dataclass(frozen=True)
class Augmenter:
    """DSA strategy for small greyscale or colour images: scale, rotate, crop, flip, colour, cutout."""

    scale: float = 0.2
    rotate_degrees: float = 15.0
    translate: float = 0.125
    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.3
    cutout: float = 0.25

    def sample(self, generator: torch.Generator, per_example: int = 1) -> AugmentParams:
        """Draw parameters; `per_example=1` gives one transform shared by every image (siamese)."""
        k = per_example
        u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
        sx = 1.0 + self.scale * (2 * u(k) - 1)
        sy = 1.0 + self.scale * (2 * u(k) - 1)
        theta = (2 * u(k) - 1) * math.radians(self.rotate_degrees)
        flip = torch.where(u(k) < 0.5, -1.0, 1.0) if self.flip else torch.ones(k)
        tx, ty = (2 * u(k) - 1) * self.translate * 2, (2 * u(k) - 1) * self.translate * 2
        cos, sin = torch.cos(theta), torch.sin(theta)
        affine = torch.stack(
            [torch.stack([sx * cos * flip, -sy * sin, tx], -1), torch.stack([sx * sin * flip, sy * cos, ty], -1)], 1
        )
        return AugmentParams(
            affine=affine,
            brightness=(2 * u(k) - 1) * self.brightness,
            contrast=1.0 + (2 * u(k) - 1) * self.contrast,
            cutout=u(k, 2),
        )

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Transform a batch in model space ([-1, 1]); differentiable in `x`."""
        n = x.shape[0]
        if n == 0:
            return x
        dev, dt = x.device, x.dtype
        rows = lambda t: (t if t.shape[0] == n else t.expand(n, *t.shape[1:])).to(dev, dt)  # noqa: E731
        grid = F.affine_grid(rows(params.affine), list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * rows(params.contrast).view(n, 1, 1, 1) + mean + rows(params.brightness).view(n, 1, 1, 1)
        if self.cutout > 0:
            h, w = x.shape[-2:]
            centre = rows(params.cutout)
            ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1) / h
            xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w) / w
            half = self.cutout / 2
            inside = ((ys - centre[:, 0].view(n, 1, 1)).abs() < half) & ((xs - centre[:, 1].view(n, 1, 1)).abs() < half)
            out = out * (~inside).unsqueeze(1).to(dt)
        return out


def per_example(views: Sequence[AugmentParams], counts: Sequence[int]) -> AugmentParams:
    """One row per example: shared draw j repeated counts[j] times, so batches that share a pass keep their own view."""
    reps = torch.as_tensor(list(counts), dtype=torch.long)
    return AugmentParams(
        **{f.name: torch.cat([getattr(v, f.name) for v in views]).repeat_interleave(reps, dim=0)
           for f in fields(AugmentParams)}
    )
