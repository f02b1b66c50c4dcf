"""The site's privacy ledger: an append-only, fsynced, hash-chained JSON-lines file.

Every release of data-derived output is preceded by a `spend` entry holding the full
mechanism of the run (written before any real record is read), and followed by a
`release` entry naming the hash of what left the site. The budget check composes every
`spend` entry ever written, so a crash, a resume or a rerun can never reset what was spent.
A ledger that does not parse or whose chain is broken stops everything: it is never reset.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.privacy.accounting import ACCOUNTANTS, Mechanism, check_delta, epsilon_of_history

GENESIS = "0" * 64
LEDGER_FORMAT = 1


class LedgerError(RuntimeError):
    """Base class for ledger failures."""


class LedgerCorruptError(LedgerError):
    """The ledger file does not parse or its hash chain is broken; nothing was changed."""


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


class Ledger:
    """One site's ledger file. Open with `Ledger.open(path, ...)`; every method re-reads and verifies."""

    def __init__(self, path: Path, signer: Ed25519PrivateKey | None = None) -> None:
        self.path = Path(path)
        self.signer = signer  # the site's Ed25519 key: each new entry's hash is signed with it

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
        """Open an existing ledger (checking it) or create one with a total budget (default ε=10, δ=1e-5, RDP).

        Budget arguments given for an existing ledger must match what it records: a site's
        budget is fixed when its ledger is created. With `signer`, every entry written from
        now on carries the site's Ed25519 signature over its hash (checked by `fedsynth audit`).
        """
        ledger = cls(Path(path), signer)
        if ledger.path.exists() and ledger.path.stat().st_size > 0:
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
        budget = 10.0 if budget_epsilon is None else float(budget_epsilon)
        delta = 1e-5 if delta is None else float(delta)
        accountant = accountant or "rdp"
        if not budget > 0:
            raise ValueError(f"site budget epsilon must be > 0, got {budget}")
        check_delta(delta)
        if accountant not in ACCOUNTANTS:
            raise ValueError(f"unknown accountant {accountant!r}")
        ledger.path.parent.mkdir(parents=True, exist_ok=True)
        with ledger._locked() as entries:
            if not entries:
                ledger._append(
                    entries,
                    {
                        "kind": "open",
                        "format": LEDGER_FORMAT,
                        "budget_epsilon": _json_epsilon(budget),
                        "delta": delta,
                        "accountant": accountant,
                    },
                )
        return ledger

    # ---- reading --------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """All entries, verified: each parses, counts up from 0 and chains to the hash before it."""
        if not self.path.exists():
            raise LedgerError(f"no ledger at {self.path}")
        with open(self.path, "rb") as handle:
            return self._parse(handle.read())

    def _parse(self, raw: bytes) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        if raw and not raw.endswith(b"\n"):
            raise LedgerCorruptError(f"{self.path}: last entry is incomplete (no newline): the file was cut or edited")
        previous = GENESIS
        for number, line in enumerate(raw.splitlines()):
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise LedgerCorruptError(f"{self.path}: entry {number} does not parse ({err})") from err
            if not isinstance(entry, dict) or entry.get("seq") != number:
                raise LedgerCorruptError(f"{self.path}: entry {number} is out of sequence")
            if entry.get("prev") != previous:
                raise LedgerCorruptError(f"{self.path}: entry {number} does not chain to entry {number - 1}")
            if entry.get("hash") != _entry_hash(entry):
                raise LedgerCorruptError(f"{self.path}: entry {number} was changed after it was written")
            previous = entry["hash"]
            entries.append(entry)
        if entries and entries[0].get("kind") != "open":
            raise LedgerCorruptError(f"{self.path}: entry 0 is not the ledger header")
        return entries

    def header(self) -> dict[str, Any]:
        entries = self.entries()
        if not entries:
            raise LedgerCorruptError(f"{self.path}: empty ledger file")
        return entries[0]

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
        """Record the whole planned mechanism of `run_id` before any real record is touched.

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
            return self._append(
                entries,
                {
                    "kind": "spend",
                    "run_id": run_id,
                    "mechanism": mechanism.to_dict(),
                    "delta": delta,
                    "accountant": accountant,
                    "site_epsilon_after": _json_epsilon(after),
                    **details,
                },
            )

    def record_release(self, run_id: str, sha256: str) -> dict:
        """Record that `run_id`'s output (content hash `sha256`) is about to leave the site."""
        with self._locked() as entries:
            if not any(e["kind"] == "spend" and e["run_id"] == run_id for e in entries):
                raise LedgerError(f"run {run_id} has no spend entry: refusing to release unaccounted output")
            return self._append(entries, {"kind": "release", "run_id": run_id, "sha256": sha256})

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        """Exclusive lock over read-verify-append, so concurrent runs at one site cannot both pass the check."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with os.fdopen(os.dup(fd), "rb") as handle:
                entries = self._parse(handle.read())
            yield entries
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _append(self, entries: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
        entry = {
            "seq": len(entries),
            "prev": entries[-1]["hash"] if entries else GENESIS,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **body,
        }
        entry["hash"] = _entry_hash(entry)
        if self.signer is not None:
            entry["signature"] = self.signer.sign(entry["hash"].encode()).hex()
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if not entries:
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        entries.append(entry)
        return entry
