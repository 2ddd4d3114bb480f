"""The engine: runs model work off the event loop, one worker thread per device, and
streams what the work emits back to the caller as it is produced.

Work is a function ``work(sink)`` run on the device's worker. It calls ``sink.emit(item)``
for each partial result (from inside forward hooks too) and ``sink.check()`` between
layers and steps; both raise Cancelled once the caller has gone away, which stops the
computation.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import Cancelled, Overloaded

_DONE = object()


@dataclass
class _Failure:
    error: BaseException


class Sink:
    """Where work running on a worker thread puts its partial results."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Any]) -> None:
        self._loop = loop
        self._queue = queue
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Marks the call as gone; the next emit() or check() raises Cancelled."""
        self._cancelled.set()

    def check(self) -> None:
        """Raises Cancelled if the caller has gone away."""
        if self._cancelled.is_set():
            raise Cancelled()

    def emit(self, item: Any) -> None:
        """Sends one partial result to the caller now."""
        self.check()
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)


Work = Callable[[Sink], None]


@dataclass
class _DeviceWorker:
    executor: ThreadPoolExecutor
    waiting: int = 0
    running: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Engine:
    """Runs work for models, one worker per device, with a bounded queue per device."""

    def __init__(self, max_queue: int) -> None:
        self._max_queue = max_queue
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

    async def stream(self, device: torch.device, work: Work) -> AsyncIterator[Any]:
        """Runs `work` on the device's worker and yields what it emits, as it emits it.

        Raises Overloaded at once when the device's queue is full. Closing the iterator
        (the caller went away) cancels the work at its next check.
        """
        worker = self._worker(device)
        with worker.lock:
            if worker.waiting >= self._max_queue:
                raise Overloaded(
                    f"{worker.waiting} requests are already queued for {device}; retry later"
                )
            worker.waiting += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sink = Sink(loop, queue)
        self._sinks.add(sink)

        def run() -> None:
            with worker.lock:
                worker.waiting -= 1
                worker.running += 1
            try:
                sink.check()
                work(sink)
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except Cancelled:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)
            except BaseException as error:  # handed to the caller's coroutine
                loop.call_soon_threadsafe(queue.put_nowait, _Failure(error))
            finally:
                with worker.lock:
                    worker.running -= 1

        future = loop.run_in_executor(worker.executor, run)
        try:
            while True:
                item = await queue.get()
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            sink.cancel()
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
