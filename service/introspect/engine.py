"""The engine: runs model work off the event loop, one worker thread per device, and
streams what the work emits back to the caller as it is read.

Work is a function ``work(sink)`` run on the device's worker. It calls ``sink.emit(item)``
for each partial result (from inside forward hooks too) and ``sink.check()`` between
steps (the data plane also checks at every layer, see hooks.cancellation_checks); both
raise Cancelled once the caller has gone away, which stops the computation.

Backpressure: at most HANDOFF_ITEMS emitted items wait for the caller. ``emit`` blocks
the worker while that many are waiting, wakes when the caller takes one or goes away,
and raises ReaderStalled when the caller has taken nothing for ``stall_timeout`` seconds:
the worker is freed, and the caller, when it reads again, gets what was already sent
and then that error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import Cancelled, Overloaded, ReaderStalled

HANDOFF_ITEMS = 2
"""Emitted items that may wait for the caller before the worker blocks."""

_DONE = object()


@dataclass
class _Failure:
    error: BaseException


class Sink:
    """Where work running on a worker thread puts its partial results: a bounded hand-off
    to the caller's coroutine."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[Any],
        capacity: int = HANDOFF_ITEMS,
        stall_timeout: float = 10.0,
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._capacity = capacity
        self._stall_timeout = stall_timeout
        self._cancelled = threading.Event()
        self._space = threading.Condition()
        self._pending = 0  # emitted, not yet taken by the caller

    @property
    def cancelled(self) -> bool:
        """Whether the caller has gone away."""
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Marks the call as gone; the next emit() or check() raises Cancelled, and an
        emit() waiting for room wakes now."""
        self._cancelled.set()
        with self._space:
            self._space.notify_all()

    def check(self) -> None:
        """Raises Cancelled if the caller has gone away."""
        if self._cancelled.is_set():
            raise Cancelled()

    def taken(self) -> None:
        """Called (on the loop) when the caller has finished with one item."""
        with self._space:
            self._pending -= 1
            self._space.notify_all()

    def emit(self, item: Any) -> None:
        """Sends one partial result to the caller, waiting while `capacity` items are
        already waiting for it. Raises Cancelled when the caller goes away meanwhile,
        ReaderStalled when it takes nothing for `stall_timeout` seconds."""
        self.check()
        with self._space:
            if self._pending >= self._capacity:
                give_up = time.monotonic() + self._stall_timeout
                while self._pending >= self._capacity and not self._cancelled.is_set():
                    left = give_up - time.monotonic()
                    if left <= 0:
                        raise ReaderStalled(
                            f"the reader stalled: it took no message for {self._stall_timeout:g}s "
                            "while results were waiting; the computation was stopped"
                        )
                    self._space.wait(left)
            self.check()
            self._pending += 1
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def finish(self, item: Any) -> None:
        """Hands the end of the stream (_DONE or a _Failure) to the caller. A failure
        replaces what was waiting: a stalled reader gets the error next, not the rest."""
        replace = isinstance(item, _Failure)
        self._loop.call_soon_threadsafe(self._finish_on_loop, item, replace)

    def _finish_on_loop(self, item: Any, replace: bool) -> None:
        while replace and not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(item)


Work = Callable[[Sink], None]

_WAITING, _RUNNING, _GONE = "waiting", "running", "gone"


@dataclass
class _DeviceWorker:
    executor: ThreadPoolExecutor
    waiting: int = 0
    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Slot:
    """One call's place in its device's queue: waiting, running, or gone (cancelled
    while waiting: its place was given back at once)."""

    worker: _DeviceWorker
    state: str = _WAITING

    def start(self) -> bool:
        """Waiting -> running, on the worker; False when the call left while waiting."""
        with self.worker.lock:
            if self.state != _WAITING:
                return False
            self.state = _RUNNING
            self.worker.waiting -= 1
            self.worker.running += 1
            return True

    def end(self) -> None:
        """Running -> gone, on the worker, when the work has ended."""
        with self.worker.lock:
            self.worker.running -= 1
            self.state = _GONE

    def leave(self) -> None:
        """The caller went away: a waiting call gives its place back now (the worker
        will skip it); a running one keeps it until the work stops."""
        with self.worker.lock:
            if self.state == _WAITING:
                self.worker.waiting -= 1
                self.state = _GONE


class Engine:
    """Runs work for models, one worker per device, with a bounded queue per device."""

    def __init__(self, max_queue: int, stall_timeout: float = 10.0) -> None:
        self._max_queue = max_queue
        self._stall_timeout = stall_timeout
        self._workers: dict[str, _DeviceWorker] = {}
        self._sinks: set[Sink] = set()

    def _worker(self, device: torch.device) -> _DeviceWorker:
        key = str(device)
        if key not in self._workers:
            self._workers[key] = _DeviceWorker(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"introspect-{key}")
            )
        return self._workers[key]

    def queue_depth(self, device: torch.device) -> tuple[int, int]:
        """(waiting, running) calls for a device."""
        worker = self._worker(device)
        return worker.waiting, worker.running

    def _admit(self, device: torch.device) -> _Slot:
        worker = self._worker(device)
        with worker.lock:
            if worker.waiting >= self._max_queue:
                raise Overloaded(
                    f"{worker.waiting} requests are already queued for {device}; retry later"
                )
            worker.waiting += 1
        return _Slot(worker)

    async def stream(self, device: torch.device, work: Work) -> AsyncIterator[Any]:
        """Runs `work` on the device's worker and yields what it emits, as the caller
        reads it (see the module's note on backpressure).

        Raises Overloaded at once when the device's queue is full. Closing the iterator
        (the caller went away) gives a waiting call's place back at once and cancels
        running work at its next check.
        """
        slot = self._admit(device)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sink = Sink(loop, queue, stall_timeout=self._stall_timeout)
        self._sinks.add(sink)

        def run() -> None:
            if not slot.start():
                return
            try:
                sink.check()
                work(sink)
                sink.finish(_DONE)
            except Cancelled:
                sink.finish(_DONE)
            except BaseException as error:  # handed to the caller's coroutine
                sink.finish(_Failure(error))
            finally:
                slot.end()

        future = loop.run_in_executor(slot.worker.executor, run)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                yield item
                sink.taken()
        finally:
            sink.cancel()
            slot.leave()
            self._sinks.discard(sink)
            if future.done():
                future.result()

    def cancel_all(self) -> int:
        """Cancels the work of every call in flight (running or queued) at its next
        check; returns how many calls that was. The end of a graceful stop's grace."""
        sinks = list(self._sinks)
        for sink in sinks:
            sink.cancel()
        return len(sinks)

    def shutdown(self) -> None:
        """Stops the workers after the work in hand."""
        for worker in self._workers.values():
            worker.executor.shutdown(wait=False, cancel_futures=True)
