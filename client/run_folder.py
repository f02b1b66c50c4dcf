"""A run's output folder: locked while the run uses it, holding its checkpoint (local; never uploaded) until release.

The checkpoint moves through three states, each written atomically:
  running  — run id, secret seed, iteration, images (written before the spend, so a kill
             between checkpoint and spend resumes instead of spending again);
  finished — run id and the final images and claim, the secret seed gone (written before the
             release entry, so the seed is never on disk beside a released set);
  removed  — after the set is written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedsynth.client.errors import EngineError

CHECKPOINT_DIR = ".fedsynth-checkpoint"
LOCK_FILE = ".fedsynth-lock"


class RunFolder:
    """`with RunFolder(out) as folder:` creates `out`, checks it is writable and holds its lock for the run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock: int | None = None
        self._created = False

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def __enter__(self) -> "RunFolder":
        try:
            self._created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".fedsynth-write-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
            fd = os.open(self.path / LOCK_FILE, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as err:
            raise EngineError(f"--out {self.path}: cannot create or write it ({err.strerror or err})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise EngineError(f"{self.path} is in use by another fedsynth run; "
                                  "wait for it or choose another --out") from None
            raise
        self._lock = fd
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the lock; a folder this run made and left holding nothing but the lock goes too."""
        if self._lock is None:
            return
        if self._created and {p.name for p in self.path.iterdir()} == {LOCK_FILE}:
            (self.path / LOCK_FILE).unlink()
            self.path.rmdir()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        os.close(self._lock)
        self._lock = None

    # ---- checkpoint ---------------------------------------------------------------------------
    def save(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Write the checkpoint's tensors, then its state (which may hold the secret seed: mode 0600)."""
        ckpt = self.checkpoint_dir
        ckpt.mkdir(parents=True, exist_ok=True)
        os.chmod(ckpt, 0o700)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(ckpt / "tensors.partial"))
        os.replace(ckpt / "tensors.partial", ckpt / "tensors.safetensors")
        tmp = ckpt / "state.partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, ckpt / "state.json")

    def load(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """The checkpoint's state and tensors, or None when there is none; a damaged one is refused."""
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.exists():
            return None
        try:
            state = json.loads(state_file.read_text())
            tensors = load_file(str(self.checkpoint_dir / "tensors.safetensors"))
            if not isinstance(state, dict) or not isinstance(state.get("run_id"), str):
                raise ValueError("state has no run id")
        except (OSError, ValueError, SafetensorError) as err:
            raise EngineError(f"{self.checkpoint_dir} is damaged ({type(err).__name__}); delete it to abandon that "
                              "run (its budget stays spent)") from None
        return state, tensors

    def remove_checkpoint(self) -> None:
        shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
