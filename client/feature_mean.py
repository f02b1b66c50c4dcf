"""The site's mean feature, released as a few more steps of its DP-SGD mechanism, to centre the head's inputs.

Group-normalised ScatterNet features share a large common component (the mean feature carries about a quarter of
a record's squared norm). DP-SGD clips each record's gradient (p − y)·xᵀ to C, so that component takes a share
of every record's clip budget while the noise stays the same; training on x − μ gives the classes' differences
the whole budget (bench/RESULTS.md measures it). μ comes from `releases` more releases of the claimed
mechanism: each sums a Poisson sample (rate q) of the records' features scaled by 1/√D and clipped to norm 1
(norm C after the clip's scale), plus N(0, σ²C²) per coordinate, exactly like one DP-SGD step, so the ledger
accounts for them as composed releases. Averaging the releases and dividing by q·n gives μ with noise σ√D/(q·n·√k)
per coordinate; arranged as a channels × positions matrix, the mean is nearly low-rank and the noise is not, so
singular values below the Gavish–Donoho threshold for that known noise level are dropped (post-processing).
The head trains on x − μ with μ's direction projected out and keeps no weight along it (`train_head`), so
W·μ = 0 and what leaves the site is the same head on x, its bias as small as without the centre.
"""

from __future__ import annotations

import math

import torch

from fedsynth.client.random_streams import generator
from fedsynth.common.privacy.accounting import Mechanism


def gavish_donoho_factor(aspect: float) -> float:
    """λ*(β) of Gavish & Donoho (2014): keep singular values above λ*·√(larger side)·(noise std per entry)."""
    beta = aspect
    return math.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + math.sqrt(beta**2 + 14 * beta + 1)))


def low_rank_denoise(matrix: torch.Tensor, noise_std: float) -> torch.Tensor:
    """`matrix` with its singular values at or below the hard threshold for i.i.d. noise of `noise_std` dropped."""
    rows, cols = matrix.shape
    big, small = max(rows, cols), min(rows, cols)
    threshold = gavish_donoho_factor(small / big) * math.sqrt(big) * noise_std
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    keep = s > threshold
    return (u[:, keep] * s[keep]) @ vh[keep]


def noisy_feature_mean(features: torch.Tensor, mechanism: Mechanism, releases: int, channels: int,
                       secret: int) -> torch.Tensor:
    """The mean of `features` [n, D] (laid out as `channels` × positions) from `releases` releases of
    `mechanism`, denoised by its low rank; zeros when `releases` is 0."""
    n, dim = features.shape
    if releases == 0 or n == 0:
        return torch.zeros(dim, dtype=features.dtype, device=features.device)
    sampling, noise = generator(secret), generator(secret + 1)
    bound = math.sqrt(dim)  # no group-normalised feature exceeds it; a record beyond it is clipped to it
    with torch.no_grad():
        # each record scaled by 1/√D and clipped to norm 1: its contribution has norm ≤ 1, the noise is σ (C cancels)
        scale = 1.0 / torch.clamp(features.norm(dim=1) / bound, min=1.0) / bound
        total = torch.zeros(dim, dtype=torch.float64)
        for _ in range(releases):
            sample = (torch.rand(n, generator=sampling) < mechanism.sample_rate).nonzero().squeeze(1)
            sample = sample.to(features.device)  # only the sampled rows are touched: memory of one batch
            total += (features[sample].double() * scale[sample, None].double()).sum(0).cpu()
            total += mechanism.noise_multiplier * torch.randn(dim, generator=noise, dtype=torch.float64)
    expected = releases * mechanism.sample_rate * n  # n is public through q, as in the DP-SGD steps' averaging
    mean = bound * total / expected
    noise_std = bound * mechanism.noise_multiplier * math.sqrt(releases) / expected
    if channels > 1 and dim % channels == 0 and dim // channels > 1:
        mean = low_rank_denoise(mean.view(channels, dim // channels), noise_std).flatten()
    return mean.to(features.dtype).to(features.device)
