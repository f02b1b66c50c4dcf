"""Pool the accepted synthetic sets, and (when asked) weigh each image by the evidence its site's releases carried.

Under non-IID data a site distils every class, also those it holds a handful of records of
(skipping them would reveal which classes it holds); those images were matched against
releases that were almost pure noise. Each site reports, per class, the signal its noised
releases carried (`class_signal` in the claim, post-processing of the releases: free). With
`pool-weighting = "signal"` or `"matched"` the server scales each image's loss by it, so a
class's images from a site that held many of its records count for more than those from a
site that held none: +0.7 points at ε = 10, but −0.3 to −2.3 at ε = 1, where even the sparse
classes' noisy images help. `auto` weighs (`matched`) only when the releases carried more signal than
noise over the run for most of the pool's (site, class) cells, else keeps it uniform; the app's default is `uniform`.
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

import torch

from fedsynth.common.claim import Claim

WEIGHTINGS = ("auto", "matched", "signal", "uniform")
# `auto` weighs when the median (site, class) cell's run carried at least as much signal as noise
AUTO_MIN_RUN_SNR = 1.0
_NO_NOISE = 1e-12  # a site that added no noise: its releases' noise norm, kept above 0


def release_noise(claim: Claim) -> float:
    """The norm of one release's noise in units of C, σ·√d."""
    return claim.noise_multiplier * math.sqrt(claim.release_dimension)


def median_run_snr(signals: Sequence[Sequence[float] | None], noise: Sequence[float | None] | None,
                   releases: Sequence[int | None] | None) -> float | None:
    """The median over the pool's (site, class) cells of T·S²/ν², the signal-to-noise energy of a class's T releases.

    Each release adds S in one direction (about: the networks differ) and independent noise of norm ν, so
    over T releases the signal's energy grows as T²S² and the noise's as Tν². At ε = 10 (ten
    Dirichlet sites) the median was 3–7, at ε = 1 0.2–0.3. None when a site did not give S, ν or T.
    """
    if noise is None or releases is None or len(noise) != len(signals) or len(releases) != len(signals):
        return None
    if any(v is None for v in (*signals, *noise, *releases)) or not signals:
        return None
    cells = [steps * s * s / max(float(nu), _NO_NOISE) ** 2
             for site, nu, steps in zip(signals, noise, releases) for s in site]
    return statistics.median(cells) if cells else None


def choose_weighting(weighting: str, run_snr: float | None = None) -> str:
    """The weighting a pool gets: `auto` becomes `matched` where `run_snr` (`median_run_snr`) is ≥ 1, else `uniform`.

    Weighing by signal helped where the releases mostly carried signal (ε = 10: +0.7 points) and
    cost points where they mostly carried noise (ε = 1: −0.6 to −1.2), where every noisy image
    still helps; the threshold 1 is where a cell's signal and noise carry equal energy.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown pool weighting {weighting!r}; choose from {', '.join(WEIGHTINGS)}")
    if weighting != "auto":
        return weighting
    return "matched" if run_snr is not None and run_snr >= AUTO_MIN_RUN_SNR else "uniform"


def pool_weights(labels: Sequence[torch.Tensor], signals: Sequence[Sequence[float] | None], num_classes: int,
                 weighting: str, noise: Sequence[float | None] | None = None,
                 releases: Sequence[int | None] | None = None) -> torch.Tensor | None:
    """One weight per pooled image (sites in `labels` order), mean 1 within each class; None means uniform.

    A release of class c at site s is the clipped sum, norm S = signals[s][c] (units of C), plus
    noise of norm ν = noise[s] = σ_s·√d. The images follow its direction, (S·u + noise)/√(S² + ν²):
    u's share is S/√(S² + ν²), the noise's variance ∝ ν²/(S² + ν²), so the matched filter weighs
    them by S·√(S² + ν²)/ν² (`matched`): ∝ S/ν where noise dominates (small ε; weighing by S² there
    cost 2.3 points at ε = 1), → S²/ν² where signal does. `signal` weighs S², as if ν were the same
    everywhere and small. `auto` becomes `matched` or uniform by `choose_weighting` (`releases`: each site's T).
    A class whose images all carry no signal keeps uniform weights. Uniform when asked, or when any
    site sent no signal (or, for `matched`, no release noise).
    """
    weighting = choose_weighting(weighting, median_run_snr(signals, noise, releases) if weighting == "auto" else None)
    if weighting == "uniform" or not labels or any(s is None for s in signals):
        return None
    strength = [torch.as_tensor(signal, dtype=torch.float64) for signal in signals]  # S per site and class
    if weighting == "signal":
        per_site = [s.square() for s in strength]
    else:  # matched
        if noise is None or len(noise) != len(signals) or any(v is None for v in noise):
            return None
        nus = (max(float(v), _NO_NOISE) for v in noise)
        per_site = [s * (s.square() + nu * nu).sqrt() / (nu * nu) for s, nu in zip(strength, nus)]
    pooled = torch.cat(list(labels))
    raw = torch.cat([site_weights[site_labels] for site_labels, site_weights in zip(labels, per_site)])
    weights = torch.ones_like(raw)
    for c in range(num_classes):
        members = pooled == c
        total = raw[members].sum()
        if total > 0:
            weights[members] = raw[members] * members.sum() / total
    return weights.float()
