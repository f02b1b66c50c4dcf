"""Checks on one site's upload before the server uses it: each failure is a reason, never an exception.

Order matters only for the message: cheap structural checks first, then the signature,
then the privacy claim recomputed from its own mechanism parameters, then the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.privacy.accounting import ACCOUNTANTS, Mechanism, epsilon_of_history
from common.signing import verify
from common.synthetic_set import content_hash
from server.pool import signal_problem

REQUIRED_CLAIM = ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "clip_norm", "accountant", "sha256")


@dataclass(frozen=True)
class UploadPolicy:
    """What the server accepts this round."""

    num_classes: int
    image_shape: tuple[int, int, int]
    max_ipc: int
    max_epsilon: float
    max_delta: float = 1e-5
    max_bytes: int = 64 * 1024 * 1024


@dataclass
class Upload:
    site: str
    images: Any
    labels: Any
    claim: dict[str, Any]
    signature: bytes
    signed_round: tuple[str, str] | None = None  # (run id, nonce) the site says it signed for


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str
    epsilon: float | None = None

    @classmethod
    def reject(cls, reason: str) -> "Verdict":
        return cls(False, reason)


def check_upload(
    upload: Upload, policy: UploadPolicy, public_key: Ed25519PublicKey | None, run_id: str, nonce: str
) -> Verdict:
    """Accept `upload` or say exactly why not."""
    images, labels = upload.images, upload.labels
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        return Verdict.reject("schema: images and labels must be tensors")
    if images.dtype != torch.float32:
        return Verdict.reject(f"dtype: images are {images.dtype}, expected float32")
    if labels.dtype != torch.int64:
        return Verdict.reject(f"dtype: labels are {labels.dtype}, expected int64")
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(policy.image_shape):
        return Verdict.reject(f"shape: images are {tuple(images.shape)}, expected [N, {', '.join(map(str, policy.image_shape))}]")
    if labels.shape != (images.shape[0],):
        return Verdict.reject(f"shape: {tuple(labels.shape)} labels for {images.shape[0]} images")
    size = images.numel() * 4 + labels.numel() * 8
    if size > policy.max_bytes:
        return Verdict.reject(f"size: {size} bytes exceeds the limit of {policy.max_bytes}")
    if not torch.isfinite(images).all():
        return Verdict.reject("values: images contain NaN or infinite values")
    if images.numel() and (images.min() < 0.0 or images.max() > 1.0):
        return Verdict.reject(f"values: pixels outside [0, 1] (min {float(images.min()):.3g}, max {float(images.max()):.3g})")
    if labels.numel() and (labels.min() < 0 or labels.max() >= policy.num_classes):
        return Verdict.reject(f"labels: outside 0..{policy.num_classes - 1}")
    counts = torch.bincount(labels, minlength=policy.num_classes)
    if labels.numel() == 0 or int(counts.max()) > policy.max_ipc:
        return Verdict.reject(f"ipc: {int(counts.max()) if labels.numel() else 0} images in one class, at most {policy.max_ipc} allowed")

    claim = upload.claim
    missing = [key for key in REQUIRED_CLAIM if key not in claim]
    if missing:
        return Verdict.reject(f"schema: claim lacks {', '.join(missing)}")
    problem = signal_problem(claim, policy.num_classes)
    if problem:
        return Verdict.reject(problem)
    if upload.signed_round is not None and upload.signed_round != (run_id, nonce):
        signed_run, _ = upload.signed_round
        what = "an earlier nonce of this run" if signed_run == run_id else f"run {signed_run}"
        return Verdict.reject(f"replay: signed for {what}, not for this round (run {run_id})")
    if public_key is None:
        return Verdict.reject(f"signature: no registered public key for site {upload.site!r}")
    if not verify(public_key, upload.signature, claim, run_id, nonce):
        return Verdict.reject("signature: does not verify against the site's registered key for this run and nonce")
    if claim["sha256"] != content_hash(images, labels):
        return Verdict.reject("signature: images or labels differ from the signed content hash")

    try:
        mechanism = Mechanism(float(claim["noise_multiplier"]), float(claim["sample_rate"]), int(claim["steps"]),
                              float(claim["clip_norm"]))
        delta = float(claim["delta"])
        if claim["accountant"] not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {claim['accountant']!r}")
        recomputed = epsilon_of_history([mechanism], delta, claim["accountant"])
    except (TypeError, ValueError) as err:
        return Verdict.reject(f"claim: mechanism parameters invalid ({err})")
    claimed = math.inf if claim["epsilon"] is None else float(claim["epsilon"])
    if not math.isclose(claimed, recomputed, rel_tol=1e-6) and not (math.isinf(claimed) and math.isinf(recomputed)):
        return Verdict.reject(f"claim: ε={claimed:.6g} does not match ε={recomputed:.6g} recomputed from (σ, q, steps, δ)")
    if delta > policy.max_delta:
        return Verdict.reject(f"policy: δ={delta:g} above the server's limit {policy.max_delta:g}")
    if recomputed > policy.max_epsilon:
        return Verdict.reject(f"policy: ε={recomputed:.4g} above the server's limit {policy.max_epsilon:.4g}")
    return Verdict(True, "accepted", recomputed)
