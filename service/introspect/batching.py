"""Dynamic batching: concurrent calls whose work can share one forward run it together.

The device worker (engine.py) takes a call in its caller's turn; when the call is
`SharedCall` work and batching is on (`BatchPolicy`), it also takes the compatible calls
(equal `key`) queued behind it, in their callers' turns, waiting up to
--max-batch-delay-ms for more while other calls on the device are in progress (a lone
caller never waits), at most --max-batch-size calls in all. `run_together` then runs
them: each call prepares its part alone (tokenizing, its own checks and budget: a bad
call fails alone), the parts are grouped greedily while a group fits the budget and
--max-batch-tokens (`fits`), and each group runs one padded forward whose rows each part
reads back into its own stream.

Each call keeps its own stream through an `Outlet`: a cancelled caller, or one whose
reader stalled, closes its outlet only; its rows are computed but dropped, and the
forward stops once every outlet of the group is closed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import Cancelled, ReaderStalled
from .hooks import cancellation_checks

if TYPE_CHECKING:
    from .engine import Sink

BatchSizes = Callable[[str, int], None]
"""Observer of each shared forward: (model, calls in it)."""


@dataclass(frozen=True)
class BatchPolicy:
    """--max-batch-size and --max-batch-delay-ms: batching is off at a size of 1 or a
    delay of 0."""

    max_size: int = 8
    max_delay_seconds: float = 0.002

    @property
    def enabled(self) -> bool:
        """Whether calls are merged at all."""
        return self.max_size > 1 and self.max_delay_seconds > 0


class Outlet:
    """One call's share of a shared forward: what its part emits goes to its own sink.
    A cancel or a stalled reader closes this outlet alone (`error` holds a stall or a
    failure of this call's own), never the others'."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._closed = False
        self.error: BaseException | None = None

    @property
    def open(self) -> bool:
        """Whether the caller still wants results."""
        if not self._closed:
            try:
                self._sink.check()
            except Cancelled:
                self._closed = True
        return not self._closed

    def emit(self, item: Any) -> None:
        """Sends `item` to this call's caller (waiting for room, see Sink.emit); nothing
        once the outlet is closed."""
        if not self.open:
            return
        try:
            self._sink.emit(item)
        except Cancelled:
            self._closed = True
        except ReaderStalled as stalled:
            self.fail(stalled)

    def fail(self, error: BaseException) -> None:
        """Closes the outlet with `error`, which the caller gets at the end of its stream."""
        self._closed = True
        self.error = error

    def check(self) -> None:
        """Raises Cancelled once the outlet is closed (a lone call's cancellation check)."""
        if not self.open:
            raise Cancelled()


@dataclass(frozen=True)
class SharedCall:
    """A call's work in the form that can share a forward with other calls' work of the
    same `key` (model, method and whatever must match for one forward)."""

    key: Hashable
    model: str  # the metrics label
    prepare: Callable[[Outlet], Any]  # this call's part; raises to fail this call alone
    fits: Callable[[Sequence[Any]], bool]  # whether these parts fit one forward
    run: Callable[[Sequence[Any]], None]  # one forward for the parts; each emits to its outlet


def run_alone(sink: Sink, prepare: Callable[[Outlet], Any], run: Callable[[Sequence[Any]], None]) -> None:
    """A sharing method's work for one call on its own (batching off, or a lone call
    in process): its part, prepared with `prepare`, run alone by `run`; a cancel ends it
    quietly, and the error of its outlet (a stalled reader) is raised."""
    outlet = Outlet(sink)
    try:
        run([prepare(outlet)])
    except Cancelled:
        pass  # the outlet closed: cancelled, or its reader stalled
    if outlet.error is not None:
        raise outlet.error
    outlet.check()


def run_together(members: Sequence[tuple[SharedCall, Sink]], observe: BatchSizes | None = None) -> list[BaseException | None]:
    """Runs the calls `members` (of one key) in as few forwards as fit; returns, per
    member, the error its caller gets (None: its stream ends normally or was cancelled).
    Never raises: a failure of a shared forward is every open member's error."""
    outlets = [Outlet(sink) for _, sink in members]
    parts: list[tuple[Any, Outlet]] = []
    for (call, _), outlet in zip(members, outlets):
        if not outlet.open:
            continue
        try:
            parts.append((call.prepare(outlet), outlet))
        except Exception as error:  # this call's own: bad input, over its budget
            outlet.fail(error)
    if parts:
        first = members[0][0]
        for group in _groups(parts, first.fits):
            if observe is not None:
                observe(first.model, len(group))
            _run_group(first.run, group)
    return [outlet.error for outlet in outlets]


def _groups(parts: list[tuple[Any, Outlet]], fits: Callable[[Sequence[Any]], bool]) -> list[list[tuple[Any, Outlet]]]:
    """`parts` in order, cut into groups that each fit one forward (a part fits alone:
    its prepare checked it)."""
    groups: list[list[tuple[Any, Outlet]]] = []
    for part in parts:
        if groups and fits([member for member, _ in groups[-1]] + [part[0]]):
            groups[-1].append(part)
        else:
            groups.append([part])
    return groups


def _run_group(run: Callable[[Sequence[Any]], None], group: list[tuple[Any, Outlet]]) -> None:
    outlets = [outlet for _, outlet in group]

    def check() -> None:
        if not any(outlet.open for outlet in outlets):
            raise Cancelled()

    try:
        with cancellation_checks(check):
            check()
            run([part for part, _ in group])
    except Cancelled:
        pass  # every caller of the group went away
    except Exception as error:  # a failure of the shared forward: each open caller's
        for outlet in outlets:
            if outlet.open:
                outlet.fail(error)
