"""The round's one boundary for replies: whatever a reply holds, it becomes a report row and a verdict.

Nothing a site sends can raise out of `Intake.judge`: every reply is decoded with limits taken
from the round's policy, its claim parsed strictly, its key looked up by name in the registry
(never as a path), checked once per key, and held against the ledger anchors. A reply that
trips anything unforeseen is rejected with the exception's type as its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flwr.app import Message, RecordDict

from fedsynth.common.errors import FedsynthError, one_line
from fedsynth.common.payload import Upload, from_record, payload_bytes, read_refusal, read_telemetry
from fedsynth.common.signing import key_fingerprint
from fedsynth.server.anchors import LedgerAnchors
from fedsynth.server.registry import KeyRegistry
from fedsynth.server.validation import UploadPolicy, Verdict, check_upload


def claim_columns(upload: Upload, epsilon: float | None) -> dict[str, Any]:
    """What the per-site table keeps from an accepted claim: the mechanism and the public seed to reproduce it."""
    c = upload.claim
    return {"epsilon": epsilon, "delta": c.delta, "noise_multiplier": c.noise_multiplier, "sample_rate": c.sample_rate,
            "releases": c.releases, "clip_norm": c.clip_norm, "accountant": c.accountant, "seed": c.seed,
            "class_signal": None if c.class_signal is None else list(c.class_signal),
            "release_dimension": c.release_dimension, "ledger_seq": c.ledger_seq, "run_id": c.run_id}


@dataclass
class Intake:
    """Judges the replies of one round and keeps the accepted uploads."""

    policy: UploadPolicy
    registry: KeyRegistry
    anchors: LedgerAnchors
    run_id: str
    nonce: str
    accepted: list[Upload] = field(default_factory=list)
    _keys_accepted: set[str] = field(default_factory=set)

    def judge(self, reply: Message) -> tuple[dict[str, Any], Verdict]:
        """A report row and a verdict for `reply`; never raises."""
        node = f"node-{getattr(reply.metadata, 'src_node_id', '?')}"
        try:
            if reply.has_error():
                verdict = Verdict.reject(f"site error: {one_line(reply.error.reason)}")
                return {"site": node, "node": node, "accepted": False, "reason": verdict.reason}, verdict
            content = reply.content
        except Exception as err:  # noqa: BLE001 - the round never fails because of one site's reply
            verdict = Verdict.reject(f"reply could not be read ({type(err).__name__})")
            return {"site": node, "node": node, "accepted": False, "reason": verdict.reason}, verdict
        return self.judge_content(node, content)

    def judge_content(self, node: str, content: Any) -> tuple[dict[str, Any], Verdict]:
        """A report row and a verdict for a reply's content from `node`; never raises."""
        row: dict[str, Any] = {"site": node, "node": node}
        try:
            verdict = self._judge(content, row)
        except Exception as err:  # noqa: BLE001 - the round never fails because of one site's reply
            verdict = Verdict.reject(f"reply could not be checked ({type(err).__name__})")
            row = {"site": node, "node": node}  # nothing half-read from the reply stays in the report
        row.update(accepted=verdict.accepted, reason=one_line(verdict.reason))
        return row, verdict

    def _judge(self, content: Any, row: dict[str, Any]) -> Verdict:
        if not isinstance(content, RecordDict):
            return Verdict.reject("schema: the reply is not a record dict")
        if "refusal" in content:
            refusal = read_refusal(content)
            row["site"] = refusal.site or row["site"]
            return Verdict.reject(f"site refused: {refusal.reason}")
        try:
            upload = from_record(content, self.policy.max_images, self.policy.image_shape, self.policy.num_classes)
        except FedsynthError as err:
            return Verdict.reject(str(err))
        row["site"] = upload.site
        row["upload_bytes"] = payload_bytes(content)
        row.update(read_telemetry(content))
        key = self.registry.key(upload.site)
        fingerprint = None if key is None else key_fingerprint(key)
        if fingerprint is not None and fingerprint in self._keys_accepted:
            return Verdict.reject("duplicate: an upload signed with this site's key was already accepted")
        verdict = check_upload(upload, self.policy, key, self.run_id, self.nonce)
        if not verdict.accepted:
            return verdict
        claim = upload.claim
        if claim.ledger_seq is None or claim.ledger_head is None:
            return Verdict.reject("policy: the claim names no ledger entry (ledger_seq, ledger_head)")
        rollback = self.anchors.problem(fingerprint, claim.ledger_seq)
        if rollback:
            return Verdict.reject(rollback)
        row.update(claim_columns(upload, verdict.epsilon))
        self._keys_accepted.add(fingerprint)
        self.anchors.record(fingerprint, upload.site, claim.ledger_seq, claim.ledger_head, claim.run_id)
        self.accepted.append(upload)
        return verdict
