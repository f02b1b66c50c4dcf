"""ε recomputed by Google's `dp-accounting`, a code base independent of the Opacus accountants that
make the claims: the PLD accountant (tight, pessimistic discretisation) and its RDP accountant.
The audit holds every claim against these."""

from __future__ import annotations

import math
from typing import Callable, Iterable

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from fedsynth.common.privacy.accounting import Mechanism, check_delta


def dp_event(mechanisms: Iterable[Mechanism]) -> dp_accounting.DpEvent:
    """The composition of Poisson-subsampled Gaussian mechanisms as a dp-accounting event."""
    events = []
    for m in mechanisms:
        if m.steps == 0:
            continue
        gaussian = dp_accounting.GaussianDpEvent(m.noise_multiplier)
        step = gaussian if m.sample_rate == 1.0 else dp_accounting.PoissonSampledDpEvent(m.sample_rate, gaussian)
        events.append(dp_accounting.SelfComposedDpEvent(step, m.steps))
    return dp_accounting.ComposedDpEvent(events)


def _epsilon(make: Callable[[], dp_accounting.PrivacyAccountant], mechanisms: list[Mechanism], delta: float) -> float:
    check_delta(delta)
    live = [m for m in mechanisms if m.steps > 0]
    if not live:
        return 0.0
    if any(m.noise_multiplier == 0.0 for m in live):
        return math.inf
    accountant = make()
    accountant.compose(dp_event(live))
    return float(accountant.get_epsilon(delta))


def pld_epsilon(mechanisms: Iterable[Mechanism], delta: float) -> float:
    """ε at `delta` by dp-accounting's privacy-loss-distribution accountant."""
    return _epsilon(pld_privacy_accountant.PLDAccountant, list(mechanisms), delta)


def dpa_rdp_epsilon(mechanisms: Iterable[Mechanism], delta: float) -> float:
    """ε at `delta` by dp-accounting's RDP accountant (its own orders and conversion)."""
    return _epsilon(rdp_privacy_accountant.RdpAccountant, list(mechanisms), delta)
