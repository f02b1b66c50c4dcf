"""ScatterNet front end: kymatio's 2-D scattering transform, then per-image group normalisation.

Tramèr & Boneh (ICLR 2021) train DP-SGD on these fixed wavelet features. Scale J = 2 and L = 8
orientations give 81 channels per input channel at a quarter of the resolution (7×7 for 28×28).
Normalisation is per image (group norm without affine parameters), never by statistics of a
site's data, so the map stays fixed and free of privacy cost.

Only kymatio's 2-D torch frontend is imported: `kymatio.torch` also imports the 3-D code, which
needs `scipy.special.sph_harm`, removed in SciPy 1.17 (kymatio #1068); the 2-D code does not use it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D

from fedsynth.common.front_end.base import FrontEnd

SCALES = 2
ORIENTATIONS = 8
GROUPS = 27  # of the 81·C scattering channels; Tramèr & Boneh's choice


class ScatterNet(FrontEnd):
    """Scattering2D(J=2, L=8) of each channel, group-normalised per image, flattened."""

    name = "scatter"

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__(image_shape)
        channels, height, width = self.image_shape
        if min(height, width) < 2 ** SCALES * 2:
            raise ValueError(f"images of {height}×{width} are too small for a scattering transform at J={SCALES}")
        self.scattering = ScatteringTorch2D(J=SCALES, shape=(height, width), L=ORIENTATIONS)
        self.channels = channels * (1 + ORIENTATIONS * SCALES + ORIENTATIONS ** 2 * SCALES * (SCALES - 1) // 2)
        with torch.no_grad():
            self.map_size = tuple(self.scattering(torch.zeros(1, 1, height, width)).shape[-2:])

    @property
    def feature_channels(self) -> int:
        return self.channels

    @property
    def feature_map_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.map_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        coefficients = self.scattering(images.contiguous())  # [N, C, 81, H/4, W/4]
        coefficients = coefficients.flatten(1, 2)
        return F.group_norm(coefficients, GROUPS if self.channels % GROUPS == 0 else 1).flatten(1)
