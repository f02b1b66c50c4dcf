"""The noisy mean feature: releases of the run's subsampled Gaussian mechanism, bounded, unbiased, denoised, seeded."""

import math

import pytest
import torch

from fedsynth.client.feature_mean import gavish_donoho_factor, low_rank_denoise, noisy_feature_mean
from fedsynth.common.privacy.accounting import Mechanism


def _features(n=400, channels=6, positions=9, seed=0):
    """Records whose mean is a rank-one channels × positions pattern, each within norm √D."""
    gen = torch.Generator().manual_seed(seed)
    pattern = torch.outer(torch.linspace(0.2, 0.6, channels), torch.linspace(-0.5, 0.5, positions)).flatten()
    return pattern + 0.3 * torch.randn(n, channels * positions, generator=gen)


def test_without_noise_or_sampling_it_is_the_exact_mean():
    x = _features()
    mean = noisy_feature_mean(x, Mechanism(0.0, 1.0, 1, 0.7), releases=2, channels=1, secret=3)
    assert torch.allclose(mean, x.mean(0), atol=1e-5)


def test_no_releases_is_no_centre_and_touches_no_record():
    mean = noisy_feature_mean(torch.full((5, 4), float("nan")), Mechanism(1.0, 0.5, 1, 1.0), 0, 1, secret=1)
    assert torch.equal(mean, torch.zeros(4))


def test_it_is_unbiased_with_the_noise_of_its_releases():
    x = _features(channels=1)  # one channel: no low-rank step, the raw estimate
    n, dim = x.shape
    sigma, q, clip, releases = 3.0, 0.5, 0.25, 4  # the clip norm must cancel: a record adds C·x/√D, noise σ·C
    draws = torch.stack([noisy_feature_mean(x, Mechanism(sigma, q, 1, clip), releases, 1, secret=s)
                         for s in range(300)])
    noise_sd = math.sqrt(dim) * sigma / (q * n * math.sqrt(releases))
    sampling_sd = (x.pow(2).sum(0) * (1 - q) / (releases * q)).sqrt() / n
    expected_sd = (noise_sd**2 + sampling_sd**2).sqrt()
    assert ((draws.mean(0) - x.mean(0)).abs() < 4.5 * expected_sd / 300**0.5).all()
    assert torch.allclose(draws.std(0).mean(), expected_sd.mean(), rtol=0.1)


def test_a_record_beyond_the_norm_bound_moves_the_mean_by_at_most_its_sensitivity():
    x = _features(channels=1)
    mech = Mechanism(0.0, 1.0, 1, 1.0)
    far = x.clone()
    far[0] = 1e6  # a hostile record: its contribution is clipped to norm √D before the sum
    shift = noisy_feature_mean(far, mech, 1, 1, secret=0) - noisy_feature_mean(x, mech, 1, 1, secret=0)
    assert float(shift.norm()) <= 2 * math.sqrt(x.shape[1]) / len(x) + 1e-6


def test_the_low_rank_step_keeps_a_strong_pattern_and_drops_pure_noise():
    gen = torch.Generator().manual_seed(1)
    signal = 5.0 * torch.outer(torch.ones(40), torch.ones(20)) / math.sqrt(800)
    noise = 0.01 * torch.randn(40, 20, generator=gen)
    assert torch.allclose(low_rank_denoise(signal + noise, 0.01), signal, atol=0.02)
    assert torch.equal(low_rank_denoise(noise, 0.01), torch.zeros(40, 20))
    assert gavish_donoho_factor(1.0) == pytest.approx(4 / math.sqrt(3))  # the published square case


def test_the_denoised_estimate_is_closer_to_the_mean_than_the_raw_one():
    x = _features(n=300, channels=12, positions=16)
    mech = Mechanism(20.0, 0.5, 1, 1.0)
    raw = noisy_feature_mean(x, mech, 1, channels=1, secret=4)
    denoised = noisy_feature_mean(x, mech, 1, channels=12, secret=4)
    assert (denoised - x.mean(0)).norm() < 0.6 * (raw - x.mean(0)).norm()


def test_the_same_secret_releases_the_same_mean_and_another_does_not():
    x, m = _features(), Mechanism(1.0, 0.5, 1, 1.0)
    assert torch.equal(noisy_feature_mean(x, m, 2, 6, secret=9), noisy_feature_mean(x, m, 2, 6, secret=9))
    assert not torch.equal(noisy_feature_mean(x, m, 2, 6, secret=9), noisy_feature_mean(x, m, 2, 6, secret=10))
