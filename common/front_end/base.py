"""One interface for the fixed front ends: images in [0, 1] → one feature vector per image."""

from __future__ import annotations

import torch

FRONT_ENDS = ("none", "scatter")


class FrontEnd(torch.nn.Module):
    """A fixed, data-independent map from [N, C, H, W] images in [0, 1] to [N, D] features.

    It has no parameters and no buffers that depend on data, so applying it to a site's records is not a
    release, and it is differentiable in the images, so synthetic images can be optimised through it.
    """

    name: str = ""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)

    @property
    def feature_channels(self) -> int:
        """Channels of the feature map that `forward` flattens (features are channels × positions)."""
        return self.image_shape[0]

    @property
    def feature_map_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the feature map that `forward` flattens, for heads that convolve it."""
        return self.image_shape

    @property
    def feature_dim(self) -> int:
        with torch.no_grad():
            return int(self(torch.zeros(1, *self.image_shape)).shape[1])

    def features(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """Features of many images without autograd, `batch` at a time (bounded memory)."""
        with torch.no_grad():
            return torch.cat([self(images[i:i + batch]) for i in range(0, len(images), batch)]) if len(images) else \
                torch.zeros(0, self.feature_dim)


class Pixels(FrontEnd):
    """The identity: pixels flattened (the pixel engine's input)."""

    name = "none"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def build_front_end(name: str, image_shape: tuple[int, int, int]) -> FrontEnd:
    """The named front end for images of `image_shape` (C, H, W)."""
    if name == "none":
        return Pixels(image_shape)
    if name == "scatter":
        from fedsynth.common.front_end.scatter import ScatterNet

        return ScatterNet(image_shape)
    raise ValueError(f"unknown front end {name!r}; choose one of {', '.join(FRONT_ENDS)}")
