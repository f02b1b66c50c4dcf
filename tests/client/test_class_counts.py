"""The noisy class histogram: one release of the run's subsampled Gaussian mechanism, unbiased, seeded."""

import torch

from fedsynth.client.class_counts import noisy_class_counts
from fedsynth.common.privacy.accounting import Mechanism

LABELS = torch.arange(4).repeat_interleave(torch.tensor([100, 300, 0, 50]))


def test_without_noise_or_sampling_the_counts_are_exact():
    assert noisy_class_counts(LABELS, 4, Mechanism(0.0, 1.0, 1, 0.7), secret=3) == (100.0, 300.0, 0.0, 50.0)


def test_counts_are_unbiased_with_the_variance_of_sampling_and_noise():
    sigma, q, clip = 2.0, 0.5, 0.3  # the clip norm must cancel: each record adds C·e_y, the noise is σ·C
    draws = torch.tensor([noisy_class_counts(LABELS, 4, Mechanism(sigma, q, 1, clip), secret=s) for s in range(600)])
    true = torch.tensor([100.0, 300.0, 0.0, 50.0])
    expected_sd = (sigma**2 / q**2 + true * (1 - q) / q).sqrt()  # Gaussian noise / q, plus Poisson sampling
    assert ((draws.mean(0) - true).abs() < 4 * expected_sd / 600**0.5).all()
    assert torch.allclose(draws.std(0), expected_sd, rtol=0.15)


def test_the_same_secret_releases_the_same_counts_and_another_does_not():
    m = Mechanism(1.0, 0.5, 1, 1.0)
    assert noisy_class_counts(LABELS, 4, m, secret=9) == noisy_class_counts(LABELS, 4, m, secret=9)
    assert noisy_class_counts(LABELS, 4, m, secret=9) != noisy_class_counts(LABELS, 4, m, secret=10)
