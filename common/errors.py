"""One base class for every refusal fedsynth makes, so each boundary (CLI, ClientApp, ServerApp) catches one type.

A refusal is an expected outcome with a one-line reason: bad input, an exhausted budget, a
damaged ledger. The CLI prints it as `fedsynth: error: …` and exits 2; a site sends it to the
server as a refusal record. Anything else that escapes is a bug.
"""

from __future__ import annotations


class FedsynthError(Exception):
    """An expected refusal; `str(err)` is the one line shown to the user."""


def one_line(text: object, limit: int = 300) -> str:
    """`text` on one table-safe line (no newlines, no `|`), its end kept where it is long."""
    flat = " ".join(str(text).replace("|", "/").split())
    return flat if len(flat) <= limit else f"{flat[: limit // 3]} … {flat[-2 * limit // 3:]}"
