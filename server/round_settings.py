"""The round's choice-valued settings, checked before any site is asked (and so before any site spends)."""

from __future__ import annotations

from typing import Mapping

from fedsynth.common.front_end import FRONT_ENDS
from fedsynth.server.front_end_model import AGGREGATIONS
from fedsynth.server.pool import WEIGHTINGS

# run-config key → (its choices, the server's default when the key is absent; None: the key must be given)
CHOICES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "pool-weighting": (WEIGHTINGS, WEIGHTINGS[0]),
    "aggregation": (AGGREGATIONS, AGGREGATIONS[0]),
    "front-end": (FRONT_ENDS, None),  # no fallback: the sites would read the app's own default
}


def choice_of(cfg: Mapping[str, object], key: str) -> str:
    """The value of choice key `key` in the run config, or the server's default for it."""
    choices, default = CHOICES[key]
    return str(cfg.get(key, default))


def unknown_setting(cfg: Mapping[str, object]) -> str | None:
    """One line naming the first choice-valued setting whose value is not one of its choices, else None."""
    for key, (choices, _) in CHOICES.items():
        value = choice_of(cfg, key)
        if value not in choices:
            return f"unknown {key} {value[:40]!r}; choose from {', '.join(choices)}"
    return None
