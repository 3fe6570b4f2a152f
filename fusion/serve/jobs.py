"""What the server's scheduler takes and gives: jobs in, each job's events out through its ticket.

The HTTP app only submits ``Job``s and reads ``Event``s; how rows share the model lives in ``scheduler.py``. A
job's events: ``text`` (a delta) and ``image`` (a finished PIL image) of each of its rows, then exactly one of
``done`` (finish reasons and usage) or ``error``. A ticket is read from the asyncio loop that submitted it
(``async for``) or, submitted off any loop, from a thread (``for``). Tests hold the scheduler between steps with
its ``StepGate`` (``hold`` / ``advance`` / ``release``)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

from PIL import Image as PILImage

from fusion.document import Document
from fusion.inference.config import GenerationConfig

FINISH_REASONS = ("stop", "length", "cancelled")  # eos / stop string / final eoi; the budget; the client left


class QueueFull(Exception):
    """The queue holds ``max_queue`` jobs already; ``retry_after`` seconds is a fair wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class Job:
    """One request's work: a prompt, its complete-able config (the server's defaults with the request's fields),
    its seed (None: fresh randomness) and whether the done event carries the generated ids."""

    prompt: Document
    config: GenerationConfig
    seed: int | None = None
    return_ids: bool = False


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int
    images: int
    forward_passes: int  # decoder passes the job took part in, its prefill included


@dataclass(frozen=True)
class Event:
    """``kind`` text (``text``), image (``image``): a piece of output row ``row`` (a job has
    ``num_return_sequences`` rows); then done (per row ``finish_reasons`` and, when asked for, ``ids``; the
    job's ``usage``) or error (``message``)."""

    kind: str
    row: int = 0
    text: str | None = None
    image: PILImage.Image | None = None
    finish_reasons: list[str] | None = None
    usage: Usage | None = None
    ids: list[list[int]] | None = None
    message: str | None = None


class Ticket:
    """A submitted job's handle: its events in order, and ``cancel()`` (its rows freed within one step)."""

    _ids = itertools.count()

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Events go to ``loop`` (default: the running one, if any), else to a thread-safe queue."""
        self.job, self.id = job, f"gen-{next(self._ids)}"
        self.cancelled = threading.Event()
        if loop is None:
            with contextlib.suppress(RuntimeError):
                loop = asyncio.get_running_loop()
        self._loop = loop
        if loop is None:
            self._sync: queue.Queue[Event] = queue.Queue()
        else:
            self._async: asyncio.Queue[Event] = asyncio.Queue()

    def put(self, event: Event) -> None:
        """Deliver an event (from the scheduler's threads)."""
        if self._loop is None:
            self._sync.put(event)
        elif not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between: nobody is reading
                self._loop.call_soon_threadsafe(self._async.put_nowait, event)

    def cancel(self) -> None:
        self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self._async.get()
            yield event
            if event.kind in ("done", "error"):
                return

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self._sync.get()
            yield event
            if event.kind in ("done", "error"):
                return


@dataclass
class Stats:
    """What ``/metrics`` reads at scrape time besides what the app counts itself."""

    queued: int = 0
    busy_rows: int = 0
    max_rows: int = 0
    steps: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class StepGate:
    """The test hook: ``hold()`` stops the loop before its next step; ``advance(n)`` lets n steps run and returns
    once they have; ``release()`` lets it run freely again. Without a hold it costs one check a step."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held, self._allowed, self._taken = False, 0, 0

    def hold(self) -> None:
        with self._cond:
            self._held, self._allowed, self._taken = True, 0, 0

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()

    def advance(self, steps: int = 1, timeout: float = 60.0) -> None:
        with self._cond:
            target = self._taken + steps
            self._allowed += steps
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._taken >= target or not self._held, timeout):
                raise TimeoutError(f"the scheduler did not take {steps} step(s) in {timeout} s")

    def wait_turn(self, stop: threading.Event) -> bool:
        """Called by the loop before a step: False when the scheduler is stopping instead."""
        with self._cond:
            while self._held and self._allowed <= self._taken and not stop.is_set():
                self._cond.wait(0.05)
            return not stop.is_set()

    def took_step(self) -> None:
        with self._cond:
            self._taken += 1
            self._cond.notify_all()


class Queue:
    """Jobs waiting for rows, first in first out, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit, self._items, self._lock = limit, deque(), threading.Lock()

    def push(self, ticket: Ticket, retry_after: int) -> None:
        with self._lock:
            if len(self._items) >= self.limit:
                raise QueueFull(retry_after)
            self._items.append(ticket)

    def peek(self) -> Ticket | None:
        with self._lock:
            return self._items[0] if self._items else None

    def pop(self) -> Ticket:
        with self._lock:
            return self._items.popleft()

    def drain(self) -> list[Ticket]:
        with self._lock:
            items, self._items = list(self._items), deque()
            return items

    def __len__(self) -> int:
        return len(self._items)
