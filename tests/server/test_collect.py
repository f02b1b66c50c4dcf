"""Replies are handed on as they arrive, each once, and the wait ends at the timeout."""

import time
from types import SimpleNamespace

from fedsynth.server.collect import stream_replies


class SlowGrid:
    """A stand-in Grid whose sites answer at given seconds after the push (None: never)."""

    def __init__(self, delays: dict[str, float | None]) -> None:
        self.delays, self.pushed_at, self.pulls = delays, 0.0, []

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        return list(self.delays)

    def pull_messages(self, ids):
        self.pulls.append(set(ids))
        now = time.monotonic() - self.pushed_at
        ready = [i for i in ids if self.delays[i] is not None and self.delays[i] <= now]
        # a real SuperLink may hand a reply over again; the stream must not yield it twice
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ready * 2]


def test_each_reply_is_yielded_once_as_soon_as_it_is_pulled():
    grid = SlowGrid({"fast": 0.0, "slow": 0.3})
    started, arrivals = time.monotonic(), []
    for reply in stream_replies(grid, [], timeout=5.0, poll=0.05):
        arrivals.append((reply.metadata.reply_to_message_id, time.monotonic() - started))
    assert [name for name, _ in arrivals] == ["fast", "slow"]
    assert arrivals[0][1] < 0.2  # the fast site is not held back by the slow one
    assert all("fast" not in ids for ids in grid.pulls[1:])  # answered ids are no longer asked for


def test_the_wait_ends_at_the_timeout_with_the_replies_so_far():
    grid = SlowGrid({"fast": 0.0, "never": None})
    started = time.monotonic()
    got = [r.metadata.reply_to_message_id for r in stream_replies(grid, [], timeout=0.5, poll=0.05)]
    assert got == ["fast"]
    assert 0.45 < time.monotonic() - started < 2.0
