import math

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from fedsynth.common.privacy.accounting import Mechanism, calibrate_noise_multiplier, check_delta, epsilon_of_history


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
@pytest.mark.parametrize("target", [1.0, 10.0])
def test_calibrated_sigma_meets_target_without_waste(accountant, target):
    q, steps, delta = 0.01, 500, 1e-5
    sigma = calibrate_noise_multiplier(target, delta, q, steps, accountant)
    eps = epsilon_of_history([Mechanism(sigma, q, steps, 1.0)], delta, accountant)
    assert eps <= target
    assert eps >= 0.97 * target  # not needlessly noisy
    # 5 % less noise must break the target: σ is (close to) the smallest that meets it
    assert epsilon_of_history([Mechanism(0.95 * sigma, q, steps, 1.0)], delta, accountant) > target


def test_composition_matches_opacus_stepwise():
    history = [Mechanism(1.1, 0.02, 300, 1.0), Mechanism(2.0, 0.05, 100, 0.1)]
    acc = RDPAccountant()
    for m in history:
        for _ in range(m.steps):
            acc.step(noise_multiplier=m.noise_multiplier, sample_rate=m.sample_rate)
    assert epsilon_of_history(history, 1e-5, "rdp") == pytest.approx(acc.get_epsilon(1e-5), rel=1e-9)
    # composition costs more than either part
    assert epsilon_of_history(history, 1e-5) > max(epsilon_of_history([m], 1e-5) for m in history)


def test_prv_agrees_with_rdp_within_its_tightness():
    m = [Mechanism(1.0, 0.01, 1000, 1.0)]
    rdp, prv = epsilon_of_history(m, 1e-5, "rdp"), epsilon_of_history(m, 1e-5, "prv")
    assert prv <= rdp  # PRV is the tighter accountant
    acc = PRVAccountant()
    acc.history = [(1.0, 0.01, 1000)]
    assert prv == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_no_noise_is_unbounded_and_nothing_is_free():
    assert math.isinf(epsilon_of_history([Mechanism(0.0, 0.1, 1, 1.0)], 1e-5))
    assert epsilon_of_history([], 1e-5) == 0.0


@pytest.mark.parametrize("delta,n", [(0.0, None), (1.0, None), (-1e-5, None), (1e-3, 1000), (2e-3, 1000)])
def test_bad_delta_refused(delta, n):
    with pytest.raises(ValueError, match="delta"):
        check_delta(delta, n)


@pytest.mark.parametrize("kwargs", [dict(sample_rate=0.0), dict(sample_rate=1.5), dict(steps=-1),
                                    dict(noise_multiplier=-1.0)])
def test_mechanism_rejects_nonsense(kwargs):
    base = dict(noise_multiplier=1.0, sample_rate=0.1, steps=10, clip_norm=1.0)
    with pytest.raises(ValueError):
        Mechanism(**{**base, **kwargs})


def test_bad_target_epsilon_refused():
    for eps in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="epsilon"):
            calibrate_noise_multiplier(eps, 1e-5, 0.01, 100)


def test_calibration_searches_once_per_mechanism(monkeypatch):
    """A site's progress lines and its plan ask for the same σ: the search runs once, and a different
    mechanism still gets its own search (the cache key is the whole mechanism)."""
    import fedsynth.common.privacy.accounting as accounting

    calls = []
    real = accounting.get_noise_multiplier

    def counting(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(accounting, "get_noise_multiplier", counting)
    first = calibrate_noise_multiplier(1.234, 1e-5, 0.0123, 77)
    assert calibrate_noise_multiplier(1.234, 1e-5, 0.0123, 77) == first
    assert len(calls) == 1
    assert calibrate_noise_multiplier(1.234, 1e-5, 0.0123, 308) > first  # four times the steps need more noise
    assert len(calls) == 2
