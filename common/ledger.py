"""The site's privacy ledger: an append-only, fsynced, hash-chained JSON-lines file.

Every release of data-derived output is preceded by a `spend` entry holding the full
mechanism of the run (written before any real record is read), and followed by a
`release` entry naming the hash of what left the site. The budget check composes every
`spend` entry ever written, so a crash, a resume or a rerun can never reset what was spent.
A ledger that does not parse, whose chain is broken, whose entries do not fit the schema or
(when the site's key is known) are not signed by it stops everything: it is never reset.
A ledger file is created atomically with its header, so an existing file without one
(even an empty one) is corrupt, never new.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedsynth.common.errors import FedsynthError
from fedsynth.common.privacy.accounting import (ACCOUNTANTS, DEFAULT_ACCOUNTANT, Mechanism, check_delta,
                                                 epsilon_of_history)
from fedsynth.common.signing import key_fingerprint

GENESIS = "0" * 64
LEDGER_FORMAT = 1
KINDS = ("open", "spend", "release")
MECHANISM_FIELDS = ("noise_multiplier", "sample_rate", "steps", "clip_norm")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX128 = re.compile(r"[0-9a-f]{128}")


class LedgerError(FedsynthError, RuntimeError):
    """Base class for ledger failures: refusals the CLI and a site report in one line, never a crash."""


class LedgerCorruptError(LedgerError):
    """The ledger file does not parse, breaks its chain, schema or signatures; nothing was changed."""


class BudgetExceededError(LedgerError):
    """The planned release would take the site past its total privacy budget."""


def _entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _json_epsilon(value: float) -> float | None:
    """JSON has no infinity: an unbounded ε is written as null."""
    return None if math.isinf(value) else float(value)


def _from_json_epsilon(value: float | None) -> float:
    return math.inf if value is None else float(value)


def _line(entry: dict[str, Any]) -> bytes:
    """An entry as the one line it is written as: sorted keys, ASCII, newline."""
    return (json.dumps(entry, sort_keys=True) + "\n").encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _is_number(value: Any) -> bool:
    """A finite JSON number (bool is not a number here, and NaN/Infinity tokens are refused)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_hex(value: Any, pattern: re.Pattern[str] = _HEX64) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _schema_problem(entry: Any, number: int) -> str | None:
    """Why entry `number` is not a well-formed entry, or None: so a reader never meets a KeyError or TypeError."""
    if not isinstance(entry, dict):
        return "is not a JSON object"
    seq = entry.get("seq")
    if type(seq) is not int:
        return f"has seq {seq!r}, not an integer"
    for key in ("prev", "hash"):
        if not _is_hex(entry.get(key)):
            return f"has no 64-hex {key}"
    if "signature" in entry and not _is_hex(entry["signature"], _HEX128):
        return "has a signature that is not 128 hex digits"
    if "time" in entry and not isinstance(entry["time"], str):
        return "has a time that is not a string"
    kind = entry.get("kind")
    if kind not in KINDS:
        return f"has kind {kind!r}, not one of {', '.join(KINDS)}"
    if (kind == "open") != (number == 0):
        return "is not the ledger header" if number == 0 else "is a second ledger header"
    if kind == "open":
        if type(entry.get("format")) is not int or entry["format"] != LEDGER_FORMAT:
            return f"has format {entry.get('format')!r}; this code reads format {LEDGER_FORMAT}"
        budget = entry.get("budget_epsilon", "missing")
        if budget is not None and not (_is_number(budget) and budget > 0):
            return f"has budget_epsilon {budget!r}, not a positive number or null"
        if not (_is_number(entry.get("delta")) and 0 < entry["delta"] < 1):
            return f"has delta {entry.get('delta')!r}, not a number in (0, 1)"
        if entry.get("accountant") not in ACCOUNTANTS:
            return f"has accountant {entry.get('accountant')!r}, not one of {', '.join(ACCOUNTANTS)}"
        if "public_key" in entry and not _is_hex(entry["public_key"]):
            return "has a public_key that is not 64 hex digits"
        return None
    if not isinstance(entry.get("run_id"), str):
        return "has no string run_id"
    if kind == "release":
        return None if _is_hex(entry.get("sha256")) else "has no 64-hex sha256"
    mechanism = entry.get("mechanism")
    if not isinstance(mechanism, dict) or sorted(mechanism) != sorted(MECHANISM_FIELDS):
        return f"has mechanism {mechanism!r}, not exactly {', '.join(MECHANISM_FIELDS)}"
    if not all(_is_number(mechanism[key]) for key in MECHANISM_FIELDS) or type(mechanism["steps"]) is not int:
        return f"has mechanism {mechanism!r}: fields must be finite numbers and steps an integer"
    try:
        Mechanism(**mechanism)
    except (TypeError, ValueError) as err:
        return f"has an invalid mechanism ({err})"
    if not (_is_number(entry.get("delta")) and 0 < entry["delta"] < 1):
        return f"has delta {entry.get('delta')!r}, not a number in (0, 1)"
    if not isinstance(entry.get("accountant"), str):
        return "has no string accountant"
    for key in ("epsilon", "site_epsilon_after"):
        if entry.get(key) is not None and not _is_number(entry[key]):
            return f"has {key} {entry[key]!r}, not a number or null"
    return None


def _fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class Ledger:
    """One site's ledger file. Open with `Ledger.open(path, ...)`; every method re-reads and verifies."""

    def __init__(self, path: Path, signer: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self.signer = signer  # the site's Ed25519 key: new entries are signed and every entry read is verified with it

    # ---- opening --------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        budget_epsilon: float | None = None,
        delta: float | None = None,
        accountant: str | None = None,
        signer: Ed25519PrivateKey | None = None,
    ) -> "Ledger":
        """Open an existing ledger (checking it) or create one with a total budget (default ε=10, δ=1e-5, PRV).

        Budget arguments given for an existing ledger must match what it records: a site's
        budget is fixed when its ledger is created. With `signer`, every entry must carry the
        site's Ed25519 signature over its hash, new entries are signed, and a new ledger's
        header records the public key (checked again by `fedsynth audit`).
        """
        ledger = cls(Path(path), signer)
        if not os.path.lexists(ledger.path):
            budget = 10.0 if budget_epsilon is None else float(budget_epsilon)
            new_delta = 1e-5 if delta is None else float(delta)
            new_accountant = accountant or DEFAULT_ACCOUNTANT
            if not budget > 0:
                raise ValueError(f"site budget epsilon must be > 0, got {budget}")
            check_delta(new_delta)
            if new_accountant not in ACCOUNTANTS:
                raise ValueError(f"unknown accountant {new_accountant!r}")
            header: dict[str, Any] = {
                "kind": "open",
                "format": LEDGER_FORMAT,
                "budget_epsilon": _json_epsilon(budget),
                "delta": new_delta,
                "accountant": new_accountant,
            }
            if signer is not None:
                header["public_key"] = key_fingerprint(signer.public_key())
            if ledger._create(ledger._seal([], header)):
                return ledger
            # another process created it first: open theirs like any existing ledger
        header = ledger.header()
        asked = {"budget_epsilon": budget_epsilon, "delta": delta, "accountant": accountant}
        recorded = {
            "budget_epsilon": _from_json_epsilon(header["budget_epsilon"]),
            "delta": header["delta"],
            "accountant": header["accountant"],
        }
        for key, value in asked.items():
            if value is not None and value != recorded[key]:
                raise LedgerError(
                    f"{ledger.path}: {key} is {recorded[key]} in this ledger and cannot be changed to {value}; "
                    "a site's budget is fixed when its ledger is created"
                )
        return ledger

    def _create(self, header: dict[str, Any]) -> bool:
        """Create the file holding only `header`, atomically (temp file, fsync, link); False if it already exists."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".new")  # mode 0600
        try:
            try:
                os.write(fd, (json.dumps(header, sort_keys=True) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, self.path)
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp)
        _fsync_dir(self.path.parent)
        return True

    # ---- reading --------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """All entries, verified: each parses, fits the schema, counts up from 0, chains to the hash before it and,
        when the site's key is known, is signed by it."""
        fd = self._open_regular(os.O_RDONLY)
        with os.fdopen(fd, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH)  # never read half of an append
            return self._parse(handle.read())

    def _open_regular(self, flags: int) -> int:
        """Open the ledger without blocking on a FIFO or device; anything but a regular file is refused."""
        try:
            fd = os.open(self.path, flags | os.O_NONBLOCK | os.O_NOCTTY)
        except FileNotFoundError:
            raise LedgerError(f"no ledger at {self.path}") from None
        except OSError as err:
            raise LedgerError(f"{self.path}: cannot open the ledger ({err.strerror or err})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise LedgerError(f"{self.path} is not a regular file: a ledger is one")
        os.set_blocking(fd, True)
        return fd

    def _parse(self, raw: bytes) -> list[dict[str, Any]]:
        if not raw:
            raise LedgerCorruptError(f"{self.path}: empty ledger file (no header): it was cut or replaced")
        if not raw.endswith(b"\n"):
            raise LedgerCorruptError(f"{self.path}: last entry is incomplete (no newline): the file was cut or edited")
        public_key = self.signer.public_key() if self.signer is not None else None
        entries: list[dict[str, Any]] = []
        previous = GENESIS
        for number, line in enumerate(raw.split(b"\n")[:-1]):  # "\n" only: a "\r" is an edit
            try:
                entry = json.loads(line, parse_constant=_refuse_constant)
                problem = _schema_problem(entry, number)
            except (ValueError, RecursionError, OverflowError) as err:  # bad JSON, NaN, huge numbers
                raise LedgerCorruptError(f"{self.path}: entry {number} does not parse ({type(err).__name__})") from None
            if problem is None and line != _line(entry).rstrip(b"\n"):  # duplicate keys, CRLF, edited spacing
                problem = "is not in the form it was written in (edited by hand?)"
            if problem is not None:
                raise LedgerCorruptError(f"{self.path}: entry {number} {problem}")
            if entry["seq"] != number:
                raise LedgerCorruptError(f"{self.path}: entry {number} is out of sequence")
            if entry["prev"] != previous:
                raise LedgerCorruptError(f"{self.path}: entry {number} does not chain to entry {number - 1}")
            if entry["hash"] != _entry_hash(entry):
                raise LedgerCorruptError(f"{self.path}: entry {number} was changed after it was written")
            if public_key is not None:
                if number == 0 and entry.get("public_key", key_fingerprint(public_key)) != key_fingerprint(public_key):
                    raise LedgerCorruptError(
                        f"{self.path}: this ledger belongs to another key (public key {entry['public_key'][:16]}…), "
                        "not this site's signing key"
                    )
                try:
                    public_key.verify(bytes.fromhex(entry.get("signature", "")), entry["hash"].encode())
                except (InvalidSignature, ValueError):
                    raise LedgerCorruptError(f"{self.path}: entry {number} is not signed by this site's key") from None
            previous = entry["hash"]
            entries.append(entry)
        return entries

    def header(self) -> dict[str, Any]:
        return self.entries()[0]

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last entry: what a server keeps to catch a ledger later rolled back or forked."""
        last = self.entries()[-1]
        return last["seq"], last["hash"]

    def entry_at(self, seq: int) -> dict[str, Any] | None:
        """Entry number `seq`, or None if the ledger has none."""
        entries = self.entries()
        return entries[seq] if type(seq) is int and 0 <= seq < len(entries) else None

    @staticmethod
    def _spends(entries: list[dict[str, Any]]) -> list[Mechanism]:
        return [Mechanism(**e["mechanism"]) for e in entries if e["kind"] == "spend"]

    def spent_epsilon(self) -> float:
        """ε at the ledger's δ of everything this site has ever spent, by the ledger's accountant."""
        entries = self.entries()
        return epsilon_of_history(self._spends(entries), entries[0]["delta"], entries[0]["accountant"])

    def budget_epsilon(self) -> float:
        return _from_json_epsilon(self.header()["budget_epsilon"])

    def spend_for(self, run_id: str) -> dict[str, Any] | None:
        """The spend entry of `run_id`, if one was written."""
        return next((e for e in self.entries() if e["kind"] == "spend" and e["run_id"] == run_id), None)

    def released(self, run_id: str) -> bool:
        return any(e["kind"] == "release" and e["run_id"] == run_id for e in self.entries())

    # ---- writing --------------------------------------------------------------------------
    def spend(self, run_id: str, mechanism: Mechanism, delta: float, accountant: str, details: dict) -> dict:
        """Record the whole planned mechanism of `run_id` before any real record is touched; returns the entry.

        Raises BudgetExceededError (writing nothing) if the composition of the site's history
        with this mechanism would exceed the site budget.
        """
        with self._locked() as entries:
            header = entries[0]
            if any(e["kind"] == "spend" and e["run_id"] == run_id for e in entries):
                raise LedgerError(f"run {run_id} already has a spend entry; resume it instead of spending again")
            if delta > header["delta"]:
                raise BudgetExceededError(
                    f"run delta {delta:g} is larger than the site's ledger delta {header['delta']:g}"
                )
            budget = _from_json_epsilon(header["budget_epsilon"])
            history = self._spends(entries)
            before = epsilon_of_history(history, header["delta"], header["accountant"])
            after = epsilon_of_history(history + [mechanism], header["delta"], header["accountant"])
            if after > budget:
                raise BudgetExceededError(
                    f"site budget exhausted: spent ε={before:.4g}, this release would bring it to ε={after:.4g} "
                    f"> budget ε={budget:.4g} at δ={header['delta']:g} (ledger {self.path}). Nothing was spent."
                )
            canonical = {  # the JSON types the reader demands (steps an int even if given as 100.0)
                "noise_multiplier": float(mechanism.noise_multiplier),
                "sample_rate": float(mechanism.sample_rate),
                "steps": int(mechanism.steps),
                "clip_norm": float(mechanism.clip_norm),
            }
            return self._append(
                entries,
                {
                    **details,  # first: details can never override what is accounted
                    "kind": "spend",
                    "run_id": run_id,
                    "mechanism": canonical,
                    "delta": delta,
                    "accountant": accountant,
                    "site_epsilon_after": _json_epsilon(after),
                },
            )

    def record_release(self, run_id: str, sha256: str) -> dict:
        """Record that `run_id`'s output (content hash `sha256`) is about to leave the site; once per run."""
        with self._locked() as entries:
            if not any(e["kind"] == "spend" and e["run_id"] == run_id for e in entries):
                raise LedgerError(f"run {run_id} has no spend entry: refusing to release unaccounted output")
            earlier = next((e for e in entries if e["kind"] == "release" and e["run_id"] == run_id), None)
            if earlier is not None:
                raise LedgerError(
                    f"run {run_id} was already released (entry {earlier['seq']}): one spend pays for one release"
                )
            return self._append(entries, {"kind": "release", "run_id": run_id, "sha256": sha256})

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        """Exclusive lock over read-verify-append, so concurrent runs at one site cannot both pass the check.
        Never creates the file: only `open` does, atomically with its header."""
        fd = self._open_regular(os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as handle:
                entries = self._parse(handle.read())
            yield entries
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _seal(self, entries: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        """The next entry after `entries`: numbered, chained, hashed, signed, and checked as a reader would."""
        if "hash" in body or "signature" in body:
            raise ValueError("an entry's hash and signature are computed by the ledger, not given")
        header = entries[0] if entries else body
        if self.signer is None and "public_key" in header:
            raise LedgerError(
                f"{self.path} is signed by the site's key: open it with that key (signer=...) to write to it"
            )
        entry = {
            **body,
            "seq": len(entries),
            "prev": entries[-1]["hash"] if entries else GENESIS,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        entry["hash"] = _entry_hash(entry)
        if self.signer is not None:
            entry["signature"] = self.signer.sign(entry["hash"].encode()).hex()
        problem = _schema_problem(entry, len(entries))
        if problem is not None:  # never write what the next read would call corrupt
            raise ValueError(f"refusing to write ledger entry {len(entries)}: it {problem}")
        return entry

    def _append(self, entries: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        entry = self._seal(entries, body)
        line = _line(entry)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            if os.write(fd, line) != len(line):  # a full disk: the reader will refuse the cut line
                raise LedgerError(f"{self.path}: short write of entry {entry['seq']}")
            os.fsync(fd)
        finally:
            os.close(fd)
        entries.append(entry)
        return entry
