"""Where fedsynth runs: the compute device and the site's home folder. Used by the site, the server and the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fedsynth.common.errors import FedsynthError


class DeviceError(FedsynthError, ValueError):
    """The asked device does not exist or does not work."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA when present (or asked), else CPU; a malformed name is a DeviceError, not a torch traceback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise DeviceError(f"device {str(device)[:40]!r} is not a torch device name (auto, cpu, cuda, cuda:N): "
                          f"{str(err).splitlines()[0][:120]}") from None


def fedsynth_home() -> Path:
    """The site's working folder: $FEDSYNTH_HOME, else ~/.fedsynth."""
    return Path(os.environ.get("FEDSYNTH_HOME", Path.home() / ".fedsynth"))
