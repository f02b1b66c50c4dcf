"""Privacy accounting for fedsynth: calibration, ε of a history, and the mechanism record."""

from fedsynth.common.privacy.accounting import (
    ACCOUNTANTS,
    Mechanism,
    calibrate_noise_multiplier,
    epsilon_of_history,
)

__all__ = ["ACCOUNTANTS", "Mechanism", "calibrate_noise_multiplier", "epsilon_of_history"]
