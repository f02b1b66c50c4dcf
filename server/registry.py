"""The sites the server knows: public keys read from the keys folder's listing into a name → key map.

A site name from a reply is looked up in the map, never joined into a path, so no name can
point the server at a file of its choosing. A key registered under two names is one site:
the round accepts at most one upload per key. The map is re-read from the listing when a
valid name is missing (a simulated site registers its key on first use, during the round).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedsynth.common.payload import valid_site_name
from fedsynth.common.signing import KeyFileError, key_fingerprint, load_public_key

MAX_KEYS = 100_000


class KeyRegistry:
    """Registered public keys by site name, from the `<site>.pub` files directly in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._keys: dict[str, Ed25519PublicKey] = {}
        self.problems: list[str] = []  # key files that could not be read (reported, never fatal)
        self.reload()

    def reload(self) -> None:
        """Re-read the folder's listing: regular `<valid name>.pub` files only."""
        keys: dict[str, Ed25519PublicKey] = {}
        problems: list[str] = []
        try:
            entries = list(os.scandir(self.folder))[:MAX_KEYS]
        except OSError:
            entries = []
        for entry in entries:
            name, dot, suffix = entry.name.rpartition(".")
            if not dot or suffix != "pub" or not valid_site_name(name):
                continue
            try:
                if not stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                    continue
                keys[name] = load_public_key(Path(entry.path))
            except (KeyFileError, OSError) as err:
                problems.append(str(err))
        self._keys, self.problems = keys, problems

    def key(self, site: str) -> Ed25519PublicKey | None:
        """The key registered for `site` (None if none); re-reads the listing once for a name it lacks."""
        if not valid_site_name(site):
            return None
        if site not in self._keys:
            self.reload()
        return self._keys.get(site)

    def fingerprint(self, site: str) -> str | None:
        key = self.key(site)
        return None if key is None else key_fingerprint(key)
