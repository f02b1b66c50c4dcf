"""The server's record of each site's ledger head: the highest ledger sequence it accepted per site key.

A hash chain cannot show that its last entries were cut off. Each claim names the ledger entry
that accounts for it (`ledger_seq`, `ledger_head`); the server keeps, per site key, the
highest one it accepted. An upload whose entry is not beyond that one comes from a ledger
that was rolled back (or copied) and is rejected; `fedsynth audit --anchors FILE` checks a
ledger against the same record. What a site deletes before its first accepted upload, or
after its last, no server can see.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from fedsynth.common.errors import FedsynthError
from fedsynth.common.files import read_regular_file

ANCHORS_FORMAT = "fedsynth-anchors/1"


class AnchorsError(FedsynthError, RuntimeError):
    """The anchors file is damaged: the server stops rather than forget what it saw."""


class LedgerAnchors:
    """`{key fingerprint: {"site", "seq", "head", "run_id", "time"}}` in one JSON file, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sites: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(read_regular_file(self.path, 64 * 2**20))
                if data.get("format") != ANCHORS_FORMAT or not isinstance(data.get("sites"), dict):
                    raise ValueError("format")
                self.sites = data["sites"]
            except (OSError, ValueError, AttributeError, TypeError) as err:
                raise AnchorsError(f"{self.path}: the ledger anchors file is damaged ({type(err).__name__}); "
                                   "restore it from a backup: without it, rolled-back ledgers go unnoticed") from None

    def problem(self, fingerprint: str, seq: int | None) -> str | None:
        """Why a claim anchored at `seq` cannot come from the ledger this key's earlier uploads came from."""
        seen = self.sites.get(fingerprint)
        if seen is None:
            return None
        if seq is None:
            return "rollback: the claim names no ledger entry, but this site's earlier uploads did"
        if seq <= int(seen["seq"]):
            return (f"rollback: the claim's ledger entry {seq} is not beyond entry {seen['seq']} of an upload "
                    "already accepted from this site's key (ledger rolled back or copied)")
        return None

    def record(self, fingerprint: str, site: str, seq: int, head: str, run_id: str) -> None:
        self.sites[fingerprint] = {"site": site, "seq": seq, "head": head, "run_id": run_id,
                                   "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".partial")
        tmp.write_text(json.dumps({"format": ANCHORS_FORMAT, "sites": self.sites}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def anchor_for_site(self, site: str) -> tuple[int, str] | None:
        """(seq, head) recorded for a site name (for the audit)."""
        for entry in self.sites.values():
            if entry.get("site") == site:
                return int(entry["seq"]), str(entry["head"])
        return None
