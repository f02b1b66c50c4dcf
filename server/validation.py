"""Checks on one site's upload before the server uses it: each failure is a reason, never an exception.

Order matters only for the message: cheap structural checks first, then the signature,
then the privacy claim recomputed from its own mechanism parameters, then the policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedsynth.common.claim import MAX_TEMPERATURE
from fedsynth.common.payload import Upload
from fedsynth.common.privacy.recompute import RecomputeTimeout, epsilon_within
from fedsynth.common.signing import verify
from fedsynth.common.synthetic_set import content_hash, set_problem, soft_label_problem


@dataclass(frozen=True)
class UploadPolicy:
    """What the server accepts this round."""

    num_classes: int
    image_shape: tuple[int, int, int]
    max_ipc: int
    max_epsilon: float
    max_delta: float = 1e-5
    accountants: tuple[str, ...] = ("rdp", "prv")
    recompute_seconds: float = 60.0  # PRV runs in a child process killed at this limit; RDP is always fast
    front_end: str = "none"  # the front end the round's model trains on; a set made for another is refused

    @property
    def max_images(self) -> int:
        return self.max_ipc * self.num_classes


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
    """Accept `upload` or say exactly why not. The claim is already strictly typed (`Claim.from_json`)."""
    problem = set_problem(upload.images, upload.labels, policy.num_classes, policy.image_shape, policy.max_ipc)
    if problem:
        return Verdict.reject(problem)
    claim = upload.claim
    if len(claim.classes) != policy.num_classes or tuple(claim.image_shape) != tuple(policy.image_shape):
        return Verdict.reject(f"schema: the claim is for {len(claim.classes)} classes of "
                              f"{'×'.join(map(str, claim.image_shape))} images, this round wants {policy.num_classes} "
                              f"of {'×'.join(map(str, policy.image_shape))}")
    wants_soft = policy.front_end != "none"  # a front end's set carries its head's soft labels; pixels do not
    if claim.front_end != policy.front_end or claim.soft_labels != wants_soft:
        made = f"front end {claim.front_end}" + (" with soft labels" if claim.soft_labels else "")
        return Verdict.reject(f"schema: the set was made for {made}; this round takes front end {policy.front_end} "
                              f"{'with' if wants_soft else 'without'} soft labels")
    if wants_soft and claim.temperature is None:
        return Verdict.reject(f"schema: the claim's config gives no soft-label temperature in (0, {MAX_TEMPERATURE:g}]")
    if (upload.soft_labels is not None) != claim.soft_labels:
        return Verdict.reject("schema: soft labels " + ("missing" if claim.soft_labels else "sent but not claimed"))
    if upload.soft_labels is not None and (problem := soft_label_problem(upload.soft_labels, upload.labels,
                                                                         policy.num_classes)):
        return Verdict.reject(problem)
    if upload.signed_round != (run_id, nonce):
        signed_run, _ = upload.signed_round
        what = "an earlier nonce of this run" if signed_run == run_id else "another run"
        return Verdict.reject(f"replay: signed for {what}, not for this round")
    if public_key is None:
        return Verdict.reject("signature: no registered public key for this site name")
    if not verify(public_key, upload.signature, claim, run_id, nonce):
        return Verdict.reject("signature: does not verify against the site's registered key for this run and nonce")
    if claim.sha256 != content_hash(upload.images, upload.labels, upload.soft_labels):
        return Verdict.reject("signature: images or labels differ from the signed content hash")
    if claim.accountant not in policy.accountants:
        return Verdict.reject(f"policy: this server recomputes ε with {', '.join(policy.accountants)} only")
    if claim.delta > policy.max_delta:
        return Verdict.reject(f"policy: δ={claim.delta:g} above the server's limit {policy.max_delta:g}")
    try:
        recomputed = epsilon_within(claim.mechanism, claim.delta, claim.accountant, policy.recompute_seconds)
    except RecomputeTimeout as err:
        return Verdict.reject(f"claim: ε could not be recomputed ({err})")
    except (TypeError, ValueError, ArithmeticError) as err:
        return Verdict.reject(f"claim: mechanism parameters invalid ({type(err).__name__})")
    claimed = claim.epsilon
    if not (math.isclose(claimed, recomputed, rel_tol=1e-6) or (math.isinf(claimed) and math.isinf(recomputed))):
        return Verdict.reject(f"claim: ε={claimed:.6g} does not match ε={recomputed:.6g} "
                              "recomputed from (σ, q, releases, δ)")
    if recomputed > policy.max_epsilon:
        return Verdict.reject(f"policy: ε={recomputed:.4g} above the server's limit {policy.max_epsilon:.4g}")
    return Verdict(True, "accepted", recomputed)
