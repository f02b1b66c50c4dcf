"""Re-check privacy claims without trusting the code that made them.

A site ledger is read as plain JSON lines and its hash chain and Ed25519 signatures are
verified here, independently of `common.ledger`; every spend's ε is recomputed from its
recorded (σ, q, steps, δ) with dp-accounting's PLD accountant (the reference) and its RDP
accountant, beside Opacus' RDP and PRV. A claim below the PLD value (beyond a small
tolerance for the accountants' numerical error) fails, as does a site over its budget.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.privacy.accounting import Mechanism, epsilon_of_history
from common.privacy.independent import dpa_rdp_epsilon, pld_epsilon

# Opacus PRV and dp-accounting PLD are both numerical upper bounds; a valid claim may sit a
# hair below the PLD value. 1 % relative slack is far below any error that matters.
RELATIVE_TOLERANCE = 0.01
GENESIS = "0" * 64


def _inf(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _holds(claimed: float, recomputed: float) -> bool:
    return math.isinf(claimed) or claimed >= recomputed * (1 - RELATIVE_TOLERANCE)


def recompute(mechanisms: list[Mechanism], delta: float) -> dict[str, float]:
    """ε of a composition by every accountant the audit knows."""
    with np.errstate(divide="ignore", invalid="ignore"):  # Opacus PRV takes log(0) at q = 1; its result is fine
        return _recompute(mechanisms, delta)


def _recompute(mechanisms: list[Mechanism], delta: float) -> dict[str, float]:
    return {"pld": pld_epsilon(mechanisms, delta), "dp_accounting_rdp": dpa_rdp_epsilon(mechanisms, delta),
            "opacus_rdp": epsilon_of_history(mechanisms, delta, "rdp"),
            "opacus_prv": epsilon_of_history(mechanisms, delta, "prv")}


@dataclass
class ReleaseCheck:
    """One spend (one release) re-derived."""

    seq: int | None
    run_id: str
    time: str | None
    mechanism: dict[str, Any]
    delta: float
    accountant: str | None
    claimed_epsilon: float
    recomputed: dict[str, float]
    site_epsilon_after: float | None = None  # composition of the site's history so far (PLD)
    holds: bool = True


@dataclass
class SiteAudit:
    site: str
    source: str
    budget_epsilon: float | None = None
    delta: float | None = None
    signatures: str = "not checked (no public key)"
    releases: list[ReleaseCheck] = field(default_factory=list)
    claimed_total: float | None = None
    recomputed_total: dict[str, float] = field(default_factory=dict)
    remaining_epsilon: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_chain(path: Path, public_key: Ed25519PublicKey | None) -> tuple[list[dict[str, Any]], list[str], str]:
    """Parse a ledger line by line and report every integrity problem with its position
    (line number and recorded seq): changed, removed, re-ordered or unsigned entries."""
    problems, entries = [], []
    raw = path.read_bytes()
    if raw and not raw.endswith(b"\n"):
        problems.append("last line is incomplete (the file was cut or edited)")
    previous, expected_seq, signed, verified = GENESIS, 0, 0, 0
    for line_no, line in enumerate(raw.splitlines(), start=1):
        try:
            entry = json.loads(line)
            assert isinstance(entry, dict)
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError):
            problems.append(f"line {line_no}: not a JSON entry")
            continue
        seq = entry.get("seq")
        if seq != expected_seq:
            what = "removed" if isinstance(seq, int) and seq > expected_seq else "re-ordered or duplicated"
            problems.append(f"line {line_no}: seq {seq}, expected {expected_seq} (entries {what})")
        if entry.get("hash") != _entry_hash(entry):
            problems.append(f"line {line_no} (seq {seq}): changed after it was written (hash mismatch)")
        elif entry.get("prev") != previous:
            problems.append(f"line {line_no} (seq {seq}): does not chain to the entry before it")
        if "signature" in entry:
            signed += 1
        if public_key is not None:
            try:
                public_key.verify(bytes.fromhex(str(entry.get("signature", ""))), str(entry.get("hash")).encode())
                verified += 1
            except (InvalidSignature, ValueError):
                problems.append(f"line {line_no} (seq {seq}): signature {'missing' if 'signature' not in entry else 'invalid'}")
        previous = entry.get("hash")
        expected_seq = (seq if isinstance(seq, int) else expected_seq) + 1
        entries.append(entry)
    if entries and entries[0].get("kind") != "open":
        problems.append("line 1: not the ledger header")
    if public_key is not None:
        status = f"{verified} of {len(entries)} verified"
    else:
        status = f"not checked (no public key; {signed} of {len(entries)} entries carry a signature)"
    return entries, problems, status


def audit_ledger(path: Path, public_key: Ed25519PublicKey | None = None, site: str | None = None) -> SiteAudit:
    """Integrity, every release's ε, the site's composed ε and its remaining budget."""
    result = SiteAudit(site or path.parent.name, str(path))
    if not path.exists():
        result.problems.append(f"no ledger at {path}")
        return result
    entries, result.problems, result.signatures = read_chain(path, public_key)
    if not entries or entries[0].get("kind") != "open":
        return result
    header = entries[0]
    result.budget_epsilon, result.delta = _inf(header.get("budget_epsilon")), float(header["delta"])
    history: list[Mechanism] = []
    for entry in entries:
        if entry.get("kind") != "spend":
            continue
        try:
            mechanism = Mechanism(**entry["mechanism"])
            delta = float(entry["delta"])
        except (KeyError, TypeError, ValueError) as err:
            result.problems.append(f"seq {entry.get('seq')}: mechanism unreadable ({err})")
            continue
        history.append(mechanism)
        check = ReleaseCheck(entry.get("seq"), str(entry.get("run_id")), entry.get("time"), entry["mechanism"], delta,
                             entry.get("accountant"), _inf(entry.get("epsilon")), recompute([mechanism], delta))
        check.site_epsilon_after = pld_epsilon(history, result.delta)
        check.holds = _holds(check.claimed_epsilon, check.recomputed["pld"])
        if not check.holds:
            result.problems.append(f"seq {check.seq} (run {check.run_id}): claimed ε={check.claimed_epsilon:.6g} is below "
                                   f"ε={check.recomputed['pld']:.6g} recomputed by the PLD accountant")
        result.releases.append(check)
        result.claimed_total = _inf(entry.get("site_epsilon_after"))
    result.recomputed_total = recompute(history, result.delta)
    total = result.recomputed_total["pld"]
    if result.claimed_total is not None and not _holds(result.claimed_total, total):
        result.problems.append(f"site total: ledger says ε={result.claimed_total:.6g}, PLD composition gives ε={total:.6g}")
    if total > result.budget_epsilon * (1 + RELATIVE_TOLERANCE):
        result.problems.append(f"over budget: composed ε={total:.6g} exceeds the site budget ε={result.budget_epsilon:.6g}")
    result.remaining_epsilon = max(0.0, result.budget_epsilon - total)
    return result


def audit_run_dir(folder: Path) -> tuple[list[SiteAudit], list[str]]:
    """A server output folder: every accepted upload's claim, plus the sites' ledgers where they
    are on this machine (simulation: the run's `sites-dir`), verified with the registered keys."""
    from common.signing import load_public_key

    report_path = folder / "privacy_report.json"
    if not report_path.exists():
        raise FileNotFoundError(f"{folder} holds no privacy_report.json: not a fedsynth server output folder")
    report = json.loads(report_path.read_text())
    config = report.get("config", {})
    keys_dir = Path(str(config.get("keys-dir", folder / "keys")))
    sites_dir = Path(str(config["sites-dir"])) if config.get("sites-dir") else None
    audits, problems = [], []
    for row in report.get("sites", []):
        if not row.get("accepted"):
            continue
        name = str(row["site"])
        key_path = keys_dir / f"{name}.pub"
        ledger = sites_dir / name / "ledger.jsonl" if sites_dir else None
        if ledger is not None and ledger.exists():
            audit = audit_ledger(ledger, load_public_key(key_path) if key_path.exists() else None, name)
        else:
            audit = SiteAudit(name, f"{report_path} (upload claim; ledger not on this machine)")
        mechanism = Mechanism(float(row["noise_multiplier"]), float(row["sample_rate"]), int(row["steps"]),
                              float(row.get("clip_norm", 1.0)))
        upload = ReleaseCheck(None, "upload", None, mechanism.to_dict(), float(row["delta"]), row.get("accountant"),
                              _inf(row.get("epsilon")), recompute([mechanism], float(row["delta"])))
        upload.holds = _holds(upload.claimed_epsilon, upload.recomputed["pld"])
        if not upload.holds:
            audit.problems.append(f"upload claim ε={upload.claimed_epsilon:.6g} is below PLD ε={upload.recomputed['pld']:.6g}")
        if not audit.releases:
            audit.releases.append(upload)
        audits.append(audit)
    if not audits:
        problems.append(f"{report_path}: no accepted site to audit")
    return audits, problems


def as_json(audits: list[SiteAudit], problems: list[str]) -> dict[str, Any]:
    failures = problems + [f"{a.site}: {p}" for a in audits for p in a.problems]
    return {"ok": not failures, "failures": failures, "reference_accountant": "dp-accounting PLD",
            "relative_tolerance": RELATIVE_TOLERANCE, "sites": [{**asdict(a), "ok": a.ok} for a in audits]}
