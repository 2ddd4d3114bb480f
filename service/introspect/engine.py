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

Dynamic batching: a call whose work comes as a SharedCall may run in one forward with
the compatible calls queued behind it (batching.py); each keeps its own queue slot,
stream and cancellation.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from .batching import BatchPolicy, BatchSizes, SharedCall, run_together
from .callers import ANONYMOUS
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
class _Slot:
    """One call's place in its device's queue: waiting, running, or gone (cancelled
    while waiting: its place was given back at once, the worker skips it). `run` is the
    call's work, run in the call's context (its caller's name shows in log lines);
    `share`, when set, the same work in the form that can share a forward, with `sink`
    the call's stream."""

    worker: _DeviceWorker
    run: Callable[[], None]
    context: contextvars.Context
    sink: Sink
    share: SharedCall | None = None
    state: str = _WAITING

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


class FairQueue:
    """Waiting calls of one device: a FIFO per caller, served round robin across callers
    (start-time fair queuing with one unit per call). Each call gets a tag: its caller's
    previous tag + 1, but not below the tag of the call last taken; the call with the
    lowest tag goes next (ties: the earlier arrival). A caller with many calls waiting
    thus takes turns with the others, and a caller arriving with one call waits at most
    for the call running now. Tags are kept per caller name (a bounded set: the tokens
    file's names and "anonymous"). Not thread-safe: the device's lock guards it."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[tuple[int, int, _Slot]]] = {}
        self._next_tag: dict[str, int] = {}
        self._clock = 0
        self._arrivals = itertools.count()

    def push(self, caller: str, slot: _Slot) -> None:
        """Queues `slot` behind the calls `caller` already has waiting."""
        tag = max(self._clock, self._next_tag.get(caller, 0))
        self._next_tag[caller] = tag + 1
        self._queues.setdefault(caller, deque()).append((tag, next(self._arrivals), slot))

    def pop(self) -> _Slot | None:
        """The next call in turn (gone ones included: the worker skips them); None when
        nothing waits."""
        if not self._queues:
            return None
        caller = min(self._queues, key=lambda name: self._queues[name][0][:2])
        queue = self._queues[caller]
        tag, _, slot = queue.popleft()
        if not queue:
            del self._queues[caller]
        self._clock = max(self._clock, tag)
        return slot

    def pop_matching(self, wanted: Callable[[_Slot], bool]) -> _Slot | None:
        """The first waiting call in turn (lowest tag, then arrival) for which `wanted`
        holds, taken out of the queue; None when there is none. A batch filled with it
        takes its members in the callers' turns."""
        found: tuple[int, int, str, int] | None = None
        for caller, queue in self._queues.items():
            for position, (tag, arrival, slot) in enumerate(queue):
                if slot.state == _WAITING and wanted(slot):
                    if found is None or (tag, arrival) < found[:2]:
                        found = (tag, arrival, caller, position)
                    break  # a caller's later calls come after this one
        if found is None:
            return None
        tag, _, caller, position = found
        queue = self._queues[caller]
        slot = queue[position][2]
        del queue[position]
        if not queue:
            del self._queues[caller]
        self._clock = max(self._clock, tag)
        return slot


@dataclass
class _DeviceWorker:
    executor: ThreadPoolExecutor
    policy: BatchPolicy = field(default_factory=BatchPolicy)
    observe: BatchSizes | None = None
    waiting: int = 0
    running: int = 0
    open: int = 0  # calls between admission and the end of their stream
    lock: threading.Lock = field(default_factory=threading.Lock)
    queue: FairQueue = field(default_factory=FairQueue)
    arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def run_next(self) -> None:
        """On the worker thread: runs the next waiting call in turn, with the calls that
        can share its forward when batching is on. One is submitted per call queued, so
        every waiting call gets a turn."""
        while True:
            with self.lock:
                slot = self.queue.pop()
                if slot is None:
                    return
                if slot.state != _WAITING:
                    continue
                self._start(slot)
                batch = self._gather(slot) if slot.share is not None and self.policy.enabled else None
            if batch is None:
                slot.context.run(slot.run)
            else:
                slot.context.run(self._run_batch, batch)
            return

    def _start(self, slot: _Slot) -> None:
        slot.state = _RUNNING
        self.waiting -= 1
        self.running += 1

    def _gather(self, first: _Slot) -> list[_Slot]:
        """Under the lock: `first` and the calls of its key queued behind it, in their
        callers' turns, at most max_size. While fewer calls than the device has open
        streams (queued, or reading the results of the last batch and likely to send
        the next request) are gathered, waits up to max_delay for more; a lone call
        does not wait."""
        assert first.share is not None
        key = first.share.key
        batch = [first]
        expected = min(self.policy.max_size, self.open)
        deadline = time.monotonic() + self.policy.max_delay_seconds
        while len(batch) < self.policy.max_size:
            slot = self.queue.pop_matching(lambda other: other.share is not None and other.share.key == key)
            if slot is not None:
                self._start(slot)
                batch.append(slot)
                continue
            left = deadline - time.monotonic()
            if len(batch) >= expected or left <= 0:
                break
            self.arrived.wait(left)
        return batch

    def _run_batch(self, batch: list[_Slot]) -> None:
        """Runs the calls of `batch` together and ends each one's stream with its own
        outcome."""
        try:
            members = [(slot.share, slot.sink) for slot in batch if slot.share is not None]
            for slot, error in zip(batch, run_together(members, self.observe)):
                slot.sink.finish(_DONE if error is None else _Failure(error))
        except BaseException as error:  # run_together does not raise; a bug must not hang callers
            for slot in batch:
                slot.sink.finish(_Failure(error))
        finally:
            for slot in batch:
                slot.end()


class Engine:
    """Runs work for models, one worker per device, with a bounded queue per device."""

    def __init__(self, max_queue: int, stall_timeout: float = 10.0, batching: BatchPolicy | None = None,
                 batch_sizes: BatchSizes | None = None) -> None:
        self._max_queue = max_queue
        self._stall_timeout = stall_timeout
        self._batching = batching or BatchPolicy(max_size=1)
        self._batch_sizes = batch_sizes
        self._workers: dict[str, _DeviceWorker] = {}
        self._sinks: set[Sink] = set()

    def _worker(self, device: torch.device) -> _DeviceWorker:
        key = str(device)
        if key not in self._workers:
            self._workers[key] = _DeviceWorker(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"introspect-{key}"),
                self._batching,
                self._batch_sizes,
            )
        return self._workers[key]

    def queue_depth(self, device: torch.device) -> tuple[int, int]:
        """(waiting, running) calls for a device."""
        worker = self._worker(device)
        return worker.waiting, worker.running

    def _admit(self, device: torch.device, caller: str, run: Callable[[], None], sink: Sink,
               share: SharedCall | None) -> _Slot:
        worker = self._worker(device)
        slot = _Slot(worker, run, contextvars.copy_context(), sink, share)
        with worker.lock:
            if worker.waiting >= self._max_queue:
                raise Overloaded(
                    f"{worker.waiting} requests are already queued for {device}; retry later"
                )
            worker.waiting += 1
            worker.open += 1
            worker.queue.push(caller, slot)
            worker.arrived.notify_all()
        return slot

    async def stream(self, device: torch.device, work: Work, caller: str = ANONYMOUS,
                     share: SharedCall | None = None) -> AsyncIterator[Any]:
        """Runs `work` on the device's worker and yields what it emits, as the caller
        reads it (see the module's note on backpressure). Calls wait in the device's
        FairQueue under `caller`: callers take turns. `share`, the same work in shared
        form, lets the call run in one forward with compatible calls (batching.py).

        Raises Overloaded at once when the device's queue is full. Closing the iterator
        (the caller went away) gives a waiting call's place back at once and cancels
        running work at its next check.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        sink = Sink(loop, queue, stall_timeout=self._stall_timeout)

        def run() -> None:
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

        slot = self._admit(device, caller, run, sink, share)
        self._sinks.add(sink)
        future = loop.run_in_executor(slot.worker.executor, slot.worker.run_next)
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
            with slot.worker.lock:
                slot.worker.open -= 1
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
