"""The site's random streams: torch generators seeded from the run's secret or the public seed.

Every draw of a run (Poisson masks, DP noise, initial images, network draws) comes from its own
generator seeded here, so a resumed run draws exactly what the crashed one drew.
"""

from __future__ import annotations

import torch


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed` folded into torch's non-negative 63-bit range."""
    return torch.Generator(device=device).manual_seed(seed % (2**63))
