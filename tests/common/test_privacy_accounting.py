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


@pytest.mark.parametrize("target,q,steps,accountant", [(4.0, 1.0, 3, "prv"), (1.0, 0.05, 2000, "rdp"),
                                                       (10.0, 0.01, 500, "prv")])
def test_calibration_finds_the_sigma_of_opacus_own_search(target, q, steps, accountant):
    from opacus.accountants.utils import get_noise_multiplier

    theirs = get_noise_multiplier(target_epsilon=target, target_delta=1e-5, sample_rate=q, steps=steps,
                                  accountant=accountant, epsilon_tolerance=0.005 * target)
    assert calibrate_noise_multiplier(target, 1e-5, q, steps, accountant) == pytest.approx(theirs, rel=0.01)


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
    real = accounting._search_sigma

    def counting(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(accounting, "_search_sigma", counting)
    first = calibrate_noise_multiplier(1.234, 1e-5, 0.0123, 77)
    assert calibrate_noise_multiplier(1.234, 1e-5, 0.0123, 77) == first
    assert len(calls) == 1
    assert calibrate_noise_multiplier(1.234, 1e-5, 0.0123, 308) > first  # four times the steps need more noise
    assert len(calls) == 2


@pytest.mark.parametrize("q,steps", [(0.5, 10), (1.0, 3), (0.01, 500)])
def test_a_huge_target_gets_the_least_noise_the_search_offers_and_an_honest_epsilon(q, steps):
    """ε = 10⁴ would ask for σ ≈ 0.05, where one PRV evaluation runs for minutes: the search stops at
    MIN_SIGMA, within the target, and the ε that σ gives is the one a claim records."""
    from fedsynth.common.privacy.accounting import MIN_SIGMA

    sigma = calibrate_noise_multiplier(1e4, 1e-5, q, steps)
    assert MIN_SIGMA <= sigma <= 2 * MIN_SIGMA
    assert epsilon_of_history([Mechanism(sigma, q, steps, 1.0)], 1e-5) <= 1e4


def test_a_budget_that_needs_more_noise_than_the_search_allows_is_refused():
    with pytest.raises(ValueError, match="privacy budget is too low"):
        calibrate_noise_multiplier(1e-6, 1e-5, 1.0, 10**5, "rdp")


def test_an_accountant_out_of_memory_is_a_one_line_refusal(monkeypatch):
    """PRV's grid for σ = 1 over 10⁵ full-batch steps asks numpy for 84 GiB; where that allocation fails, the
    caller gets a ValueError (the CLI's one-line refusal), not a MemoryError. Simulated: a machine that
    overcommits memory would try to fill it."""
    def out_of_memory(self, delta, **kwargs):
        raise MemoryError("Unable to allocate 84.1 GiB")

    monkeypatch.setattr(PRVAccountant, "get_epsilon", out_of_memory)
    with pytest.raises(ValueError, match="cannot evaluate this history in memory"):
        epsilon_of_history([Mechanism(1.0, 1.0, 10**5, 1.0)], 1e-5, "prv")
