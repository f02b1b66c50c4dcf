"""Reading a file that anyone may have put there: only a regular file, never blocking on a FIFO, bounded in size."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fedsynth.common.errors import FedsynthError


class UnreadableFileError(FedsynthError, OSError):
    """Not a regular file, too large, or unreadable; the message names the path."""


def read_regular_file(path: str | os.PathLike, max_bytes: int = 256 * 2**20) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`; otherwise UnreadableFileError."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        raise UnreadableFileError(f"{path}: cannot open it ({err.strerror or err})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > max_bytes:
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableFileError(f"{path} is not a regular file")
        raise UnreadableFileError(f"{path}: {info.st_size} bytes, more than {max_bytes} allowed")
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UnreadableFileError(f"{path}: more than {max_bytes} bytes")
    return data
