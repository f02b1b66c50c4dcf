"""Replies as they arrive: push every request, then yield each reply on its own, so the server can check
it and show progress at once instead of waiting for the slowest site (Grid.send_and_receive's behaviour)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid


def stream_replies(grid: Grid, messages: Iterable[Message], timeout: float, poll: float = 3.0) -> Iterator[Message]:
    """Yield replies to `messages` as they arrive, until all have answered or `timeout` seconds have passed."""
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(pending):
            if reply.metadata.reply_to_message_id in pending:
                pending.discard(reply.metadata.reply_to_message_id)
                yield reply
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
