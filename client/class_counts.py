"""The site's class histogram, released as one more step of its DP-SGD mechanism.

Each record of a Poisson sample at the run's rate q contributes C·e_y (norm C, the same sensitivity as a
clipped gradient); the sum gets N(0, σ²C²) noise per class, exactly like one DP-SGD step, so the ledger
accounts for it as one more composed release of the claimed mechanism. Dividing by C·q gives an unbiased
count per class with standard deviation σ/q. The server weighs each site's head by these counts when it
joins sites with different label mixes (`fedsynth.common.front_end.vote`, `.consensus`).
"""

from __future__ import annotations

import torch

from fedsynth.client.random_streams import generator
from fedsynth.common.privacy.accounting import Mechanism

COUNT_RELEASES = 1  # releases of the mechanism the histogram takes, on top of the head's DP-SGD steps


def noisy_class_counts(labels: torch.Tensor, num_classes: int, mechanism: Mechanism, secret: int) -> tuple[float, ...]:
    """Per class, (noisy sum over a Poisson sample of C·e_y) / (C·q): the record count, with noise of std σ/q."""
    sampling, noise = generator(secret), generator(secret + 1)
    labels = labels.cpu()
    sample = torch.rand(labels.shape[0], generator=sampling) < mechanism.sample_rate
    clipped_sum = mechanism.clip_norm * torch.bincount(labels[sample], minlength=num_classes).double()
    noisy = clipped_sum + mechanism.noise_multiplier * mechanism.clip_norm * torch.randn(
        num_classes, generator=noise, dtype=torch.float64)
    return tuple(float(c) for c in noisy / (mechanism.clip_norm * mechanism.sample_rate))
