"""Library versions recorded in every result, claim and ledger entry."""

from __future__ import annotations

import platform
from importlib import metadata


def library_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a result depends on."""
    out = {"python": platform.python_version()}
    for name in ("fedsynth", "torch", "torchvision", "opacus", "flwr", "safetensors", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
