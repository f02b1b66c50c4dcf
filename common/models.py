"""The ConvNet used for distillation and evaluation (the dataset-distillation standard), and its DP check."""

from __future__ import annotations

import torch
from torch import nn

from fedsynth.common.errors import FedsynthError

NORMS = ("instancenorm", "groupnorm", "none", "batchnorm")


class ModelNotPrivateError(FedsynthError, ValueError):
    """Opacus cannot compute per-example gradients for this network (e.g. it has BatchNorm)."""


def _norm(kind: str, width: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)  # instance norm with per-example semantics
    if kind == "groupnorm":
        return nn.GroupNorm(4 if width % 4 == 0 else 1, width, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


class ConvNet(nn.Module):
    """`depth` blocks of conv3×3 → norm → ReLU → avg-pool, then one linear layer.

    28-pixel inputs get 3 pixels of padding in the first conv (28 → 32), as in the
    dataset-condensation ConvNet, so that three poolings leave a 4×4 map.
    """

    def __init__(
        self,
        channels: int = 1,
        num_classes: int = 10,
        image_size: int = 28,
        width: int = 128,
        depth: int = 3,
        norm: str = "instancenorm",
    ) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError("depth and width must be positive")
        layers: list[nn.Module] = []
        size, in_ch = image_size, channels
        for block in range(depth):
            pad = 3 if (block == 0 and image_size == 28) else 1
            layers += [nn.Conv2d(in_ch, width, 3, padding=pad), _norm(norm, width), nn.ReLU(inplace=False)]
            size = size + 2 * pad - 2
            if size >= 2:
                layers.append(nn.AvgPool2d(2))
                size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)
        self.config = dict(channels=channels, num_classes=num_classes, image_size=image_size, width=width, depth=depth,
                           norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def check_private(model: nn.Module) -> None:
    """Raise ModelNotPrivateError with Opacus' reasons if per-example DP is impossible for `model`."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        reasons = "; ".join(str(e) for e in errors)
        raise ModelNotPrivateError(
            f"Opacus cannot make this network private: {reasons}. "
            "Use --norm instancenorm or groupnorm (BatchNorm mixes examples in a batch, so per-example "
            "gradients and their clipping are undefined)."
        )


def linear_head(feature_dim: int, num_classes: int) -> nn.Linear:
    """A linear classifier on front-end features, from zero (a public, data-free start)."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head
