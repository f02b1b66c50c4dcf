"""The canary audit has power (noise off: a clearly positive lower bound), respects the claim under
calibrated noise, and a broken scorer is caught by the same power check."""

import pytest
import torch

from client.engine import DistillConfig
from common.audit.empirical import audit_release, epsilon_lower_bound, release_with_canaries
from common.data import ImageDataset

pytestmark = pytest.mark.slow
CANARIES = 200
POWER_FLOOR = 1.0  # noise off, 200 canaries, 40 guesses: measured 1.7-2.1 (38-39 of 40 right); chance gives 0


def _config(epsilon, iterations=40):
    return DistillConfig(ipc=10, epsilon=epsilon, iterations=iterations, inner_steps=5, width=32,
                         every_class_populated=False, seed=0)


def _empty(like: ImageDataset) -> ImageDataset:
    return ImageDataset(like.images[:0], like.labels[:0], list(like.classes), "no-base")


@pytest.fixture(scope="module")
def mnist_test():
    from common.data import load_mnist5k

    return load_mnist5k(train=False)


@pytest.fixture(scope="module")
def noiseless_release(mnist_test):
    return release_with_canaries(_empty(mnist_test), mnist_test, _config(float("inf")), CANARIES, progress=False)


def _check_power(audit):
    assert audit.empirical_epsilon_lower_bound >= POWER_FLOOR, audit


def test_bound_statistics():
    assert epsilon_lower_bound(20, 40) == 0.0  # chance-level guessing proves nothing
    assert epsilon_lower_bound(40, 40) == pytest.approx(2.56, abs=0.02)  # p^40 = 0.05 → p = 0.928
    assert epsilon_lower_bound(39, 40) < epsilon_lower_bound(40, 40) < epsilon_lower_bound(400, 400)


def test_noise_off_gives_a_clearly_positive_lower_bound(noiseless_release):
    audit = audit_release(noiseless_release)
    assert audit.claimed_epsilon is None  # no noise: ε = ∞
    _check_power(audit)
    assert audit.mia_auc > 0.6


@pytest.mark.parametrize("broken", [
    lambda cx, cy, sx, sy: torch.randn(len(cy), generator=torch.Generator().manual_seed(1)),  # ignores the release
    lambda cx, cy, sx, sy: -torch.cdist(cx.flatten(1), sx.flatten(1)).mean(1),  # ignores the labels
])
def test_broken_canary_scoring_fails_the_power_check(noiseless_release, broken):
    with pytest.raises(AssertionError):
        _check_power(audit_release(noiseless_release, scorer=broken))


def test_calibrated_noise_stays_below_the_claim(mnist_test):
    release = release_with_canaries(_empty(mnist_test), mnist_test, _config(1.0, iterations=20), CANARIES,
                                    progress=False)
    audit = audit_release(release)
    assert audit.claimed_epsilon is not None and audit.claimed_epsilon <= 1.0
    assert audit.empirical_epsilon_lower_bound <= audit.claimed_epsilon
