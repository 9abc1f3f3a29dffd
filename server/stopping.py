"""Stopping a running ServerApp on request: after the round in progress, or now.

Flower runs the ServerApp in a thread of its own (``run_simulation``) that the process cannot leave
until it returns, and ``Grid.send_and_receive`` waits for the hosts' replies for up to
``simulate.host_timeout_s`` (an hour by default) even once Flower's engine has stopped, so on Ctrl-C a
run would hang. Instead the process's signal handler (``fedkey.simulate.run_local``) sets
:data:`STOP`: :meth:`StopRequest.after_round` lets the round in progress finish and be checkpointed,
:meth:`StopRequest.now` ends the wait for replies at once (the round in progress is lost; the last
checkpoint stays). Either way the ServerApp raises :class:`RunInterrupted`, which names the round the
run folder can be resumed after.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable, Iterator

from flwr.app import Message
from flwr.serverapp import Grid

#: Seconds between polls for replies: as Flower's in-memory grid polls (its deployment grid polls every
#: 3 s; a stop is then noticed sooner, at a few small requests a second to the SuperLink).
POLL_S = 0.1


class RunInterrupted(Exception):
    """The run stopped on request; its folder holds the checkpoint of round ``resumable_after``."""

    def __init__(self, resumable_after: int) -> None:
        super().__init__(f"stopped on request; the run folder can be resumed after round {resumable_after}")
        self.resumable_after = resumable_after
        self.signal = signal.SIGINT  # the signal that asked for the stop, when one did (exit code 128 + it)


class StopRequest:
    """What the ServerApp has been asked: nothing, to stop after the round in progress, or to stop now."""

    def __init__(self) -> None:
        self._after_round = threading.Event()
        self._now = threading.Event()

    def after_round(self) -> None:
        self._after_round.set()

    def now(self) -> None:
        self._after_round.set()
        self._now.set()

    def clear(self) -> None:
        self._after_round.clear()
        self._now.clear()

    @property
    def requested(self) -> bool:
        return self._after_round.is_set()

    @property
    def immediate(self) -> bool:
        return self._now.is_set()


#: The process-wide request the ServerApp checks between rounds and while it waits for replies.
STOP = StopRequest()


def replies_as_they_come(
    grid: Grid, messages: Iterable[Message], timeout_s: float, resumable_after: int, stop: StopRequest = STOP
) -> Iterator[Message]:
    """``grid.send_and_receive`` that hands each reply on as it comes (so a consumer can let one go
    before the next arrives) and gives up when ``stop.immediate`` is set (raises
    :class:`RunInterrupted`): pushes the messages at once (the grid gives each its id), then the
    iterator polls for their replies until all have come or ``timeout_s`` has passed."""
    waiting = {i for i in grid.push_messages(messages) if i}  # a deployment grid gives None for a failed push
    return _replies(grid, waiting, time.monotonic() + timeout_s, resumable_after, stop)


def _replies(
    grid: Grid, waiting: set[str], deadline: float, resumable_after: int, stop: StopRequest
) -> Iterator[Message]:
    while waiting and time.monotonic() < deadline:
        if stop.immediate:
            raise RunInterrupted(resumable_after)
        pulled = list(grid.pull_messages(waiting))
        waiting -= {m.metadata.reply_to_message_id for m in pulled}
        pulled.reverse()  # popped from the end, each reply leaves the list as it is handed on
        while pulled:
            yield pulled.pop()
        if waiting:
            time.sleep(POLL_S)


def exchange(
    grid: Grid, messages: Iterable[Message], timeout_s: float, resumable_after: int, stop: StopRequest = STOP
) -> list[Message]:
    """All the replies of :func:`replies_as_they_come` at once."""
    return list(replies_as_they_come(grid, messages, timeout_s, resumable_after, stop))
