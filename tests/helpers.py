"""Small builders the tests share: a valid claim for a set, a signed upload record of it, and the
simulation setting that runs two tiny sites at once."""

from __future__ import annotations

import math

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsynth.common.claim import Claim
from fedsynth.common.payload import to_record
from fedsynth.common.privacy.accounting import Mechanism, epsilon_of_history
from fedsynth.common.signing import sign
from fedsynth.common.synthetic_set import content_hash, quantise

# Flower simulation setting: one CPU (and one torch thread, which Ray sets) per site: two tiny sites at once
# on two cores instead of one site at a time with two threads
TWO_AT_ONCE = "client-resources-num-cpus=1"


def grid_set(per_class: int = 2, classes: int = 10, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0):
    """Images on the 8-bit grid with `per_class` images of each of `classes` classes."""
    images = quantise(torch.rand(per_class * classes, *shape, generator=torch.Generator().manual_seed(seed)))
    return images, torch.arange(classes).repeat_interleave(per_class)


def make_claim(images: torch.Tensor, labels: torch.Tensor, *, sigma: float = 1.0, q: float = 0.01,
               releases: int = 100, classes: int = 10, ledger_seq: int | None = 1, **overrides) -> Claim:
    """A claim whose ε is the RDP value of (σ, q, releases) at δ = 1e-5, for `images`/`labels`."""
    eps = epsilon_of_history([Mechanism(sigma, q, releases, 1.0)], 1e-5, "rdp")
    values = dict(run_id="r" * 32, epsilon=eps if math.isfinite(eps) else math.inf, delta=1e-5,
                  noise_multiplier=sigma, sample_rate=q, releases=releases, clip_norm=1.0, accountant="rdp",
                  ipc=int(torch.bincount(labels).max()) if labels.numel() else 1,
                  classes=tuple(str(c) for c in range(classes)), image_shape=tuple(images.shape[1:]) or (1, 28, 28),
                  dataset="test", sha256=content_hash(images, labels), seed=0, release_dimension=100,
                  ledger_seq=ledger_seq, ledger_head=None if ledger_seq is None else "a" * 64)
    values.update(overrides)
    return Claim(**values)


def signed_record(key: Ed25519PrivateKey, images: torch.Tensor, labels: torch.Tensor, claim: Claim, site: str,
                  run_id: str, nonce: str):
    """The RecordDict a site would send: `claim` signed with `key` for (run_id, nonce)."""
    return to_record(images, labels, claim, sign(key, claim, run_id, nonce), site, run_id, nonce)
