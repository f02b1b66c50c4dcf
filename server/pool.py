"""Pool the accepted synthetic sets, and weigh each image by the evidence its site's releases carried.

Under non-IID data a site distils every class, also those it holds a handful of records of
(skipping them would reveal which classes it holds); those images were matched against
releases that were almost pure noise. Each site reports, per class, the signal its noised
releases carried (`class_signal` in the claim, post-processing of the releases: free), and
the server scales each image's loss by it, so a class's images from a site that held many
of its records count for more than those from a site that held none.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

SIGNAL_KEY = "class_signal"
WEIGHTINGS = ("snr", "signal", "uniform")
_NO_NOISE = 1e-12  # a site that added no noise: its releases' signal-to-noise ratio is unbounded


def signal_problem(claim: dict, num_classes: int) -> str | None:
    """Why a claim's `class_signal` cannot be used (None when it is absent or well formed)."""
    signal = claim.get(SIGNAL_KEY)
    if signal is None:
        return None
    if not isinstance(signal, list) or len(signal) != num_classes:
        return f"schema: {SIGNAL_KEY} must list one number per class ({num_classes})"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
               for v in signal):
        return f"values: {SIGNAL_KEY} must be finite and non-negative"
    return None


def pool_weights(labels: Sequence[torch.Tensor], signals: Sequence[Sequence[float] | None], num_classes: int,
                 weighting: str = "signal", noise_multipliers: Sequence[float] | None = None) -> torch.Tensor | None:
    """One weight per pooled image (sites in `labels` order), mean 1 within each class; None means uniform.

    A release of class c at site s is the clipped sum (norm ≈ signals[s][c]·C) plus noise of norm
    ≈ σ_s·C·√d, so the error in its direction has variance ∝ σ_s²/signals[s][c]², and its images
    are weighed by the inverse: `snr` weighs (signals[s][c] / σ_s)² — sites of few records run at a
    higher sampling rate and need a larger σ for the same ε; `signal` weighs signals[s][c]², as if
    every site's σ were the same. A class whose images all carry no signal keeps uniform weights.
    Uniform when asked, or when any site sent no signal.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown pool weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    if weighting == "uniform" or not labels or any(s is None for s in signals):
        return None
    if weighting == "snr":
        if noise_multipliers is None or len(noise_multipliers) != len(signals):
            raise ValueError("snr weighting needs each site's noise multiplier")
        signals = [[v / max(float(sigma), _NO_NOISE) for v in signal] for signal, sigma in zip(signals, noise_multipliers)]
    pooled = torch.cat(list(labels))
    raw = torch.cat([torch.as_tensor(signal, dtype=torch.float64).square()[site_labels]
                     for site_labels, signal in zip(labels, signals)])
    weights = torch.ones_like(raw)
    for c in range(num_classes):
        members = pooled == c
        total = raw[members].sum()
        if total > 0:
            weights[members] = raw[members] * members.sum() / total
    return weights.float()
