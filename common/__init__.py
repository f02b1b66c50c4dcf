"""Shared parts of fedsynth: data, models, augmentation, privacy accounting, ledger, artifacts."""

__version__ = "0.1.0"
