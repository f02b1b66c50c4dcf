"""Thin wiring over Opacus accountants: calibrate σ for a target (ε, δ) and compute ε of a history.

All arithmetic is Opacus' own; this module only fixes the vocabulary (a `Mechanism` is one
run of `steps` Poisson-subsampled Gaussian releases at rate `sample_rate` with noise
multiplier `noise_multiplier`) so that the engine, the ledger and the audit agree on it.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

ACCOUNTANTS = ("rdp", "prv")
DEFAULT_ACCOUNTANT = "prv"  # the tighter of the two: a smaller σ for the same claimed (ε, δ)
_CLASSES = {"rdp": RDPAccountant, "prv": PRVAccountant}


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
    """ε at `delta` of the composition of `mechanisms`, by the named Opacus accountant (∞ if any has σ = 0)."""
    _check_accountant(accountant)
    check_delta(delta)
    history = [(m.noise_multiplier, m.sample_rate, m.steps) for m in mechanisms if m.steps > 0]
    if not history:
        return 0.0
    if any(sigma == 0.0 for sigma, _, _ in history):
        return math.inf
    acc = _CLASSES[accountant]()
    acc.history = list(history)
    # PRV takes log(0) at q = 1 on a branch np.where then discards; RDP warns when its best order is the largest
    # it tried, where its bound is looser than it could be but still an upper bound (the claim stays valid)
    with numpy.errstate(divide="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha", category=UserWarning)
        return float(acc.get_epsilon(delta=delta))


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
        sigma = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=0.005 * target_epsilon,
            )
        )
    achieved = epsilon_of_history([Mechanism(sigma, sample_rate, steps, 1.0)], delta, accountant)
    if achieved > target_epsilon:  # never exceed the target, whatever the search returned
        raise RuntimeError(f"calibration gave σ={sigma} with ε={achieved} > target {target_epsilon}")
    return sigma
