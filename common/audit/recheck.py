"""Re-check privacy claims without trusting the code that made them.

A site ledger is read as plain JSON lines and its hash chain and Ed25519 signatures are
verified here, independently of `fedsynth.common.ledger`; every spend's ε is recomputed from its
recorded (σ, q, steps, δ) with dp-accounting's PLD accountant (the reference) and its RDP
accountant, beside Opacus' RDP and PRV. A claim below the PLD value (beyond a small
tolerance for the accountants' numerical error) fails, as does a site over its budget, an
empty or headerless ledger, an entry that does not fit the schema, a second release of one
run, and a ledger that no longer holds the (seq, hash) a server saw (rolled back or forked).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedsynth.common.privacy.accounting import ACCOUNTANTS, Mechanism, epsilon_of_history
from fedsynth.common.files import read_regular_file
from fedsynth.common.privacy.independent import dpa_rdp_epsilon, pld_epsilon

# Opacus PRV and dp-accounting PLD are both numerical upper bounds; a valid claim may sit a
# hair below the PLD value. 1 % relative slack is far below any error that matters.
RELATIVE_TOLERANCE = 0.01
GENESIS = "0" * 64
LEDGER_FORMAT = 1
MECHANISM_FIELDS = ("noise_multiplier", "sample_rate", "steps", "clip_norm")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")


def _inf(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _holds(claimed: float, recomputed: float) -> bool:
    return math.isinf(claimed) or claimed >= recomputed * (1 - RELATIVE_TOLERANCE)


def recompute(mechanisms: list[Mechanism], delta: float) -> dict[str, float]:
    """ε of a composition by every accountant the audit knows."""
    with np.errstate(divide="ignore", invalid="ignore"):  # Opacus PRV takes log(0) at q = 1; its result is fine
        return _recompute(mechanisms, delta)


# what a fedsynth claim may hold (common/claim.py); outside it a spend is a failure, not minutes of accounting
MAX_NOISE_MULTIPLIER, MAX_STEPS = 100.0, 10**6
PRV_MAX_NOISE_MULTIPLIER = 10.0  # Opacus PRV takes minutes for large σ over many steps; it is reported beside the rest


def outside_envelope(mechanism: Mechanism) -> str | None:
    """Why the audit will not recompute `mechanism` (None when it will)."""
    if mechanism.noise_multiplier > MAX_NOISE_MULTIPLIER or mechanism.steps > MAX_STEPS:
        return (f"mechanism σ={mechanism.noise_multiplier:.4g}, steps={mechanism.steps} lies outside what a claim may "
                f"hold (σ ≤ {MAX_NOISE_MULTIPLIER:g}, steps ≤ {MAX_STEPS:,})")
    return None


def _recompute(mechanisms: list[Mechanism], delta: float) -> dict[str, float | None]:
    prv = all(m.noise_multiplier <= PRV_MAX_NOISE_MULTIPLIER for m in mechanisms)
    return {"pld": pld_epsilon(mechanisms, delta), "dp_accounting_rdp": dpa_rdp_epsilon(mechanisms, delta),
            "opacus_rdp": epsilon_of_history(mechanisms, delta, "rdp"),
            "opacus_prv": epsilon_of_history(mechanisms, delta, "prv") if prv else None}


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


def _number(value: Any) -> bool:
    """A finite JSON number; bool and the NaN/Infinity tokens are not."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _hex(value: Any, pattern: re.Pattern[str] = _HEX64) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def malformed(entry: dict[str, Any], position: int) -> str | None:
    """Why the entry on line `position + 1` breaks the ledger schema, or None (checked here, not by common.ledger)."""
    seq = entry.get("seq")
    if type(seq) is not int:
        return f"seq {seq!r} is not an integer"
    for key in ("prev", "hash"):
        if not _hex(entry.get(key)):
            return f"{key} is not 64 hex digits"
    if "signature" in entry and not _hex(entry["signature"], _HEX128):
        return "signature is not 128 hex digits"
    kind = entry.get("kind")
    if kind not in ("open", "spend", "release"):
        return f"kind {kind!r} is not open, spend or release"
    if kind == "open" and position != 0:
        return "a second ledger header"
    if kind == "open":
        if type(entry.get("format")) is not int or entry["format"] != LEDGER_FORMAT:
            return f"format {entry.get('format')!r} is not {LEDGER_FORMAT}"
        budget = entry.get("budget_epsilon", "missing")
        if budget is not None and not (_number(budget) and budget > 0):
            return f"budget_epsilon {budget!r} is not a positive number or null"
        if not (_number(entry.get("delta")) and 0 < entry["delta"] < 1):
            return f"delta {entry.get('delta')!r} is not a number in (0, 1)"
        if entry.get("accountant") not in ACCOUNTANTS:
            return f"accountant {entry.get('accountant')!r} is not one of {', '.join(ACCOUNTANTS)}"
        if "public_key" in entry and not _hex(entry["public_key"]):
            return "public_key is not 64 hex digits"
        return None
    if not isinstance(entry.get("run_id"), str):
        return "run_id is not a string"
    if kind == "release":
        return None if _hex(entry.get("sha256")) else "sha256 is not 64 hex digits"
    mechanism = entry.get("mechanism")
    if not isinstance(mechanism, dict) or set(mechanism) != set(MECHANISM_FIELDS):
        return f"mechanism {mechanism!r} does not hold exactly {', '.join(MECHANISM_FIELDS)}"
    if not all(_number(mechanism[key]) for key in MECHANISM_FIELDS) or type(mechanism["steps"]) is not int:
        return f"mechanism {mechanism!r}: fields must be finite numbers and steps an integer"
    try:
        Mechanism(**mechanism)
    except (TypeError, ValueError) as err:
        return f"mechanism is invalid ({err})"
    if not (_number(entry.get("delta")) and 0 < entry["delta"] < 1):
        return f"delta {entry.get('delta')!r} is not a number in (0, 1)"
    if not isinstance(entry.get("accountant"), str):
        return "accountant is not a string"
    for key in ("epsilon", "site_epsilon_after"):
        if entry.get(key) is not None and not _number(entry[key]):
            return f"{key} {entry[key]!r} is not a number or null"
    return None


def check_anchor(entries: list[dict[str, Any]], seq: int, head: str) -> str | None:
    """A problem if the ledger no longer holds entry `seq` with the hash `head` a server saw: rolled back or forked."""
    if type(seq) is not int or seq < 0 or not isinstance(head, str):
        return f"anchor ({seq!r}, {head!r}) is not an entry number and a hash"
    if seq >= len(entries):
        return (f"rolled back: the server saw entry {seq} with hash {head[:12]}…, "
                f"the ledger has only {len(entries)} entries")
    entry = next((e for e in entries if type(e.get("seq")) is int and e["seq"] == seq), None)
    if entry is None:
        return f"rolled back: entry {seq}, which the server saw with hash {head[:12]}…, is missing from the ledger"
    if entry.get("hash") != head:
        return f"forked: entry {seq}'s hash differs from the one the server saw ({head[:12]}…)"
    return None


def read_chain(path: Path, public_key: Ed25519PublicKey | None) -> tuple[list[dict[str, Any]], list[str], str]:
    """Parse a ledger line by line and report every integrity problem with its position
    (line number and recorded seq): changed, removed, re-ordered, malformed or unsigned entries."""
    problems, entries = [], []
    raw = read_regular_file(path)
    if not raw:
        problems.append("empty ledger file: no header entry (a ledger is created with its header, so it was cut)")
    elif not raw.endswith(b"\n"):
        problems.append("last line is incomplete (the file was cut or edited)")
    previous, expected_seq, signed, verified = GENESIS, 0, 0, 0
    lines = raw.split(b"\n")
    for line_no, line in enumerate(lines[:-1] if raw.endswith(b"\n") else lines, start=1):
        try:
            entry = json.loads(line)
            assert isinstance(entry, dict)
            why = malformed(entry, line_no - 1)
        except (ValueError, RecursionError, OverflowError, AssertionError):  # also NaN or huge numbers
            problems.append(f"line {line_no}: not a JSON entry")
            continue
        seq = entry.get("seq")
        if why is None and line != json.dumps(entry, sort_keys=True).encode():  # duplicate keys, CRLF, re-spacing
            why = "not in the form it was written in (edited by hand?)"
        if why is not None:
            problems.append(f"line {line_no} (seq {seq!r}): malformed entry: {why}")
        if type(seq) is not int or seq != expected_seq:
            what = "removed" if type(seq) is int and seq > expected_seq else "re-ordered or duplicated"
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
                problems.append(f"line {line_no} (seq {seq}): "
                                f"signature {'missing' if 'signature' not in entry else 'invalid'}")
        previous = entry.get("hash")
        expected_seq = (seq if type(seq) is int else expected_seq) + 1
        entries.append(entry)
    if entries and entries[0].get("kind") != "open":
        problems.append("line 1: not the ledger header")
    elif entries and public_key is not None and "public_key" in entries[0]:
        raw_key = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
        if entries[0]["public_key"] != raw_key:
            problems.append("line 1: the ledger header names another site's public key")
    if public_key is not None:
        status = f"{verified} of {len(entries)} verified"
    else:
        status = f"not checked (no public key; {signed} of {len(entries)} entries carry a signature)"
    return entries, problems, status


def audit_ledger(path: Path, public_key: Ed25519PublicKey | None = None, site: str | None = None,
                 anchor: tuple[int, str] | None = None) -> SiteAudit:
    """Integrity, every release's ε, the site's composed ε and its remaining budget; with `anchor`
    (a (seq, hash) the server was shown earlier), also that the ledger was not rolled back or forked since."""
    result = SiteAudit(site or path.parent.name, str(path))
    if not path.exists():
        result.problems.append(f"no ledger at {path}")
        return result
    entries, result.problems, result.signatures = read_chain(path, public_key)
    if anchor is not None:
        rolled = check_anchor(entries, *anchor)
        if rolled is not None:
            result.problems.append(rolled)
    if not entries or entries[0].get("kind") != "open" or malformed(entries[0], 0) is not None:
        return result  # no usable header: the problem is already reported
    header = entries[0]
    result.budget_epsilon, result.delta = _inf(header.get("budget_epsilon")), float(header["delta"])
    history: list[Mechanism] = []
    spent: set[str] = set()
    released: dict[str, Any] = {}
    for position, entry in enumerate(entries):
        if malformed(entry, position) is not None:  # reported by read_chain; nothing in it can be trusted to recompute
            if entry.get("kind") == "spend" and isinstance(entry.get("run_id"), str):
                spent.add(entry["run_id"])  # its release is not also "unaccounted"
            continue
        if entry["kind"] == "release":
            if entry["run_id"] not in spent:
                result.problems.append(f"seq {entry['seq']} (run {entry['run_id']}): released with no spend before it")
            if entry["run_id"] in released:
                result.problems.append(f"seq {entry['seq']} (run {entry['run_id']}): a second release of one run "
                                       f"(first at seq {released[entry['run_id']]}): one spend pays for one release")
            released.setdefault(entry["run_id"], entry["seq"])
        if entry["kind"] != "spend":
            continue
        spent.add(entry["run_id"])
        try:
            mechanism = Mechanism(**entry["mechanism"])
            delta = float(entry["delta"])
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            result.problems.append(f"seq {entry.get('seq')}: mechanism unreadable ({err})")
            continue
        if (outside := outside_envelope(mechanism)) is not None:
            result.problems.append(f"seq {entry.get('seq')}: {outside}")
            return result
        history.append(mechanism)
        check = ReleaseCheck(entry.get("seq"), str(entry.get("run_id")), entry.get("time"), entry["mechanism"], delta,
                             entry.get("accountant"), _inf(entry.get("epsilon")), recompute([mechanism], delta))
        check.site_epsilon_after = pld_epsilon(history, result.delta)
        check.holds = _holds(check.claimed_epsilon, check.recomputed["pld"])
        if not check.holds:
            result.problems.append(f"seq {check.seq} (run {check.run_id}): claimed ε={check.claimed_epsilon:.6g} "
                                   f"is below ε={check.recomputed['pld']:.6g} recomputed by the PLD accountant")
        result.releases.append(check)
        result.claimed_total = _inf(entry.get("site_epsilon_after"))
    result.recomputed_total = recompute(history, result.delta)
    total = result.recomputed_total["pld"]
    if result.claimed_total is not None and not _holds(result.claimed_total, total):
        result.problems.append(f"site total: ledger says ε={result.claimed_total:.6g}, "
                               f"PLD composition gives ε={total:.6g}")
    if total > result.budget_epsilon * (1 + RELATIVE_TOLERANCE):
        result.problems.append(f"over budget: composed ε={total:.6g} exceeds the site budget "
                               f"ε={result.budget_epsilon:.6g}")
    result.remaining_epsilon = max(0.0, result.budget_epsilon - total)
    return result


_SITE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # the server's rule: a site name is never a path


def read_anchors(path: Path) -> dict[str, tuple[int, str]]:
    """The server's ledger anchors (`server/anchors.py`'s file) as site name → (seq, head), read independently."""
    data = json.loads(read_regular_file(path, 64 * 2**20))
    out: dict[str, tuple[int, str]] = {}
    for entry in (data.get("sites") or {}).values():
        site, seq, head = entry.get("site"), entry.get("seq"), entry.get("head")
        if isinstance(site, str) and isinstance(seq, int) and not isinstance(seq, bool) and isinstance(head, str):
            out[site] = (seq, head)
    return out


def audit_run_dir(folder: Path, anchors_file: Path | None = None) -> tuple[list[SiteAudit], list[str]]:
    """A server output folder: every accepted upload's claim, plus the sites' ledgers where they
    are on this machine (simulation: the run's `sites-dir`), verified with the registered keys and
    held against the server's ledger anchors (the run's `anchors-file`, or `anchors_file`)."""
    from fedsynth.common.signing import load_public_key

    report_path = folder / "privacy_report.json"
    if not report_path.exists():
        raise FileNotFoundError(f"{folder} holds no privacy_report.json: not a fedsynth server output folder")
    report = json.loads(read_regular_file(report_path, 64 * 2**20))
    if not isinstance(report, dict) or not isinstance(report.get("config", {}), dict) \
            or not isinstance(report.get("sites", []), list):
        raise ValueError(f"{report_path} is not a fedsynth privacy report (config must be an object, sites a list)")
    config = report.get("config", {})
    keys_dir = Path(str(config.get("keys-dir", folder / "keys")))
    sites_dir = Path(str(config["sites-dir"])) if config.get("sites-dir") else None
    anchors_path = anchors_file or (Path(str(config["anchors-file"])) if config.get("anchors-file") else None)
    audits, problems = [], []
    anchors: dict[str, tuple[int, str]] = {}
    if anchors_path is not None and anchors_path.exists():
        try:
            anchors = read_anchors(anchors_path)
        except (OSError, ValueError, AttributeError) as err:
            problems.append(f"{anchors_path}: ledger anchors unreadable ({type(err).__name__})")
    for row in report.get("sites", []) if isinstance(report, dict) else []:
        if not isinstance(row, dict) or row.get("accepted") is not True:
            continue
        name = row.get("site")
        if not isinstance(name, str) or not _SITE_NAME.fullmatch(name):
            problems.append(f"{report_path}: an accepted row names no valid site ({str(name)[:40]!r})")
            continue
        key_path = keys_dir / f"{name}.pub"
        ledger = sites_dir / name / "ledger.jsonl" if sites_dir else None
        if ledger is not None and ledger.exists():
            audit = audit_ledger(ledger, load_public_key(key_path) if key_path.exists() else None, name,
                                 anchor=anchors.get(name))
        else:
            audit = SiteAudit(name, f"{report_path} (upload claim; ledger not on this machine)")
        try:
            mechanism = Mechanism(float(row["noise_multiplier"]), float(row["sample_rate"]), int(row["releases"]),
                                  float(row["clip_norm"]))
            delta = float(row["delta"])
            if (outside := outside_envelope(mechanism)) is not None:
                raise ValueError(outside)
            upload = ReleaseCheck(None, "upload", None, mechanism.to_dict(), delta, row.get("accountant"),
                                  _inf(row.get("epsilon")), recompute([mechanism], delta))
        except (KeyError, TypeError, ValueError, OverflowError) as err:
            audit.problems.append(f"upload row unreadable ({type(err).__name__}: {str(err)[:80]})")
            audits.append(audit)
            continue
        upload.holds = _holds(upload.claimed_epsilon, upload.recomputed["pld"])
        if not upload.holds:
            audit.problems.append(f"upload claim ε={upload.claimed_epsilon:.6g} is below "
                                  f"PLD ε={upload.recomputed['pld']:.6g}")
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
