"""Thin wiring over Opacus accountants: calibrate σ for a target (ε, δ) and compute ε of a history.

Every ε is Opacus' own arithmetic; this module fixes the vocabulary (a `Mechanism` is one
run of `steps` Poisson-subsampled Gaussian releases at rate `sample_rate` with noise
multiplier `noise_multiplier`) so that the engine, the ledger and the audit agree on it, and
searches σ with scipy's Brent method, which the accountant's own ε then checks.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.gdp import delta_eps_mu
from scipy.optimize import brentq

ACCOUNTANTS = ("rdp", "prv")
DEFAULT_ACCOUNTANT = "prv"  # the tighter of the two: a smaller σ for the same claimed (ε, δ)
_CLASSES = {"rdp": RDPAccountant, "prv": PRVAccountant}
TOLERANCE = 0.005  # a calibrated σ's ε lies within this fraction below the target
# the search's range. Below σ ≈ 0.1 the PRV accountant's domain explodes (one evaluation runs for minutes in
# gigabytes); a target ε that σ = MIN_SIGMA already meets (ε ≳ 50 at the engine's rates) gets σ ≈ MIN_SIGMA,
# and the claim records the smaller ε that σ gives
MIN_SIGMA, MAX_SIGMA = 0.2, 1e6


@dataclass(frozen=True)
class Mechanism:
    """`steps` compositions of the Poisson-subsampled Gaussian mechanism (sensitivity `clip_norm`)."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float

    def __post_init__(self) -> None:
        if not (0.0 < self.sample_rate <= 1.0):
            raise ValueError(f"sample_rate must be in (0, 1], got {self.sample_rate}")
        if self.steps < 0 or int(self.steps) != self.steps:
            raise ValueError(f"steps must be a non-negative integer, got {self.steps}")
        if self.noise_multiplier < 0 or not math.isfinite(self.noise_multiplier):
            raise ValueError(f"noise_multiplier must be finite and >= 0, got {self.noise_multiplier}")
        if self.clip_norm <= 0:
            raise ValueError(f"clip_norm must be > 0, got {self.clip_norm}")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")


def check_delta(delta: float, num_records: int | None = None) -> None:
    """δ must lie in (0, 1) and, when the record count is known, below 1/n."""
    if not (0.0 < delta < 1.0):
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if num_records is not None and delta >= 1.0 / num_records:
        raise ValueError(
            f"delta={delta:g} is not below 1/n = 1/{num_records}; a δ that large permits releasing a record outright"
        )


def epsilon_of_history(mechanisms: Iterable[Mechanism], delta: float, accountant: str = DEFAULT_ACCOUNTANT) -> float:
    """ε at `delta` of the composition of `mechanisms`, by the named Opacus accountant (∞ if any has σ = 0).

    Deterministic, so cached: a site's plan, progress lines, claim and ledger spend ask for the same
    composition, and one PRV evaluation costs about half a second on a CPU."""
    _check_accountant(accountant)
    check_delta(delta)
    history = tuple((float(m.noise_multiplier), float(m.sample_rate), int(m.steps)) for m in mechanisms if m.steps > 0)
    if not history:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in history):
        return math.inf
    return _epsilon(history, float(delta), accountant)


@functools.lru_cache(maxsize=1024)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    acc = _CLASSES[accountant]()
    acc.history = list(history)
    # PRV takes log(0) at q = 1 on a branch np.where then discards; RDP warns when its best order is the largest
    # it tried, where its bound is looser than it could be but still an upper bound (the claim stays valid)
    with numpy.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)
        try:
            return float(acc.get_epsilon(delta=delta))
        except MemoryError:  # PRV's grid at extreme settings asks for tens of GiB: refuse in one line
            raise ValueError(f"the {accountant} accountant cannot evaluate this history in memory "
                             f"(σ, q, steps = {history[:3]}); choose another accountant or fewer steps") from None


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = DEFAULT_ACCOUNTANT
) -> float:
    """Smallest σ (to Opacus' tolerance) whose `steps`-fold composition at rate q stays at or below ε.

    The search is deterministic, so its result is cached: a site's progress lines, its plan and its
    audit ask for the same σ and pay for the search once."""
    _check_accountant(accountant)
    check_delta(delta)
    if not (target_epsilon > 0.0) or math.isinf(target_epsilon):
        raise ValueError(f"target epsilon must be finite and > 0, got {target_epsilon}")
    return _calibrated(float(target_epsilon), float(delta), float(sample_rate), int(steps), accountant)


@functools.lru_cache(maxsize=256)
def _calibrated(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    with warnings.catch_warnings():  # the search visits tiny σ where Opacus asks for more RDP orders
        warnings.simplefilter("ignore", UserWarning)
        sigma = _search_sigma(target_epsilon, delta, sample_rate, steps, accountant)
    achieved = epsilon_of_history([Mechanism(sigma, sample_rate, steps, 1.0)], delta, accountant)
    if achieved > target_epsilon:  # never exceed the target, whatever the search returned
        raise RuntimeError(f"calibration gave σ={sigma} with ε={achieved} > target {target_epsilon}")
    return sigma


def _search_sigma(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """σ with ε(σ) in [(1 − TOLERANCE)·target, target]: scipy's Brent root finder on log ε against log σ,
    aimed at the middle of that band, inside a bracket found by steps of ×1.25 from the Gaussian-DP guess.

    ε(σ) is smooth and falling in log-log, so from a close guess Brent needs about half the accountant
    evaluations of Opacus' bisection (`get_noise_multiplier`) for the same tolerance, and it never
    evaluates far below the answer, where a PRV evaluation is slowest (seconds at ε ≫ target)."""
    aim = math.log(target_epsilon * (1.0 - TOLERANCE / 2))
    step, floor, ceiling = math.log(1.25), math.log(MIN_SIGMA), math.log(MAX_SIGMA)

    def excess(log_sigma: float) -> float:  # > 0: too little noise
        mechanism = Mechanism(math.exp(log_sigma), sample_rate, steps, 1.0)
        return math.log(max(epsilon_of_history([mechanism], delta, accountant), 1e-300)) - aim

    low = high = min(max(math.log(_gaussian_dp_guess(target_epsilon, delta, sample_rate, steps)), floor), ceiling)
    while excess(high) > 0:
        low, high = high, high + step
        if high > ceiling:
            raise ValueError(f"the privacy budget is too low: ε={target_epsilon} at δ={delta} needs σ > {MAX_SIGMA:g}")
    while low == high or excess(low) <= 0:
        low, high = low - step, low
        if low < floor:
            return math.exp(high)  # the least noise the search offers; ε is within the target
    root = float(brentq(excess, low, high, xtol=1e-4))
    # the root aims half a tolerance below the target; the bracket's noisy end is within it by construction
    return math.exp(root if excess(root) <= -math.log1p(-TOLERANCE / 2) else high)  # ε(root) ≤ target


def _gaussian_dp_guess(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """A starting σ only (the accountant decides): the μ-GDP central-limit approximation of the subsampled
    Gaussian (Dong, Roth & Su 2019; Opacus' `gdp` analysis), exact for sample rate 1."""
    def delta_gap(mu: float) -> float:
        return float(delta_eps_mu(eps=target_epsilon, mu=mu)) - delta

    try:
        mu = float(brentq(delta_gap, 1e-6, 60.0))
    except ValueError:  # no root in the bracket: start from σ = 1
        return 1.0
    if sample_rate >= 1.0:
        return math.sqrt(steps) / mu
    return 1.0 / math.sqrt(math.log1p(mu**2 / (sample_rate**2 * steps)))
