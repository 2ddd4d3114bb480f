"""Timing helpers shared by the benchmarks: warm up, repeat, report medians."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path


def measure(function: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        timings.append(time.perf_counter() - started)
    return timings


def measure_interleaved(functions: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[list[float]]:
    """Wall-clock seconds of `repeats` rounds, each calling every function once in turn,
    so that all see the same load (on a shared machine, timings taken minutes apart
    differ more than what is being compared); one list per function."""
    for _ in range(warmup):
        for function in functions:
            function()
    timings: list[list[float]] = [[] for _ in functions]
    for _ in range(repeats):
        for function, spent in zip(functions, timings):
            started = time.perf_counter()
            function()
            spent.append(time.perf_counter() - started)
    return timings


def median_ms(timings: list[float]) -> float:
    """Median in milliseconds."""
    return statistics.median(timings) * 1000


def percentile_ms(timings: list[float], fraction: float) -> float:
    """The `fraction` quantile (nearest rank) in milliseconds."""
    ordered = sorted(timings)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))] * 1000


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def synchronized(function: Callable[[], object], device: object) -> Callable[[], object]:
    """`function`, then a wait for the work it queued on `device` (CUDA kernels run
    asynchronously: without the wait a timing would end before they do)."""
    import torch

    if torch.device(device).type != "cuda":  # type: ignore[arg-type]
        return function

    def run() -> object:
        result = function()
        torch.cuda.synchronize(device)  # type: ignore[arg-type]
        return result

    return run


def model_label(argument: str | None) -> str:
    """How the benchmarks name their model: MiniLM, or the --model-dir folder's name."""
    from pathlib import Path

    return Path(argument).name if argument else "MiniLM"


def model_dir(argument: str | None) -> "Path":
    """The benchmarks' model: --model-dir when given, else the packaged MiniLM."""
    from pathlib import Path

    if argument:
        return Path(argument)
    from conftest import minilm_dir

    return minilm_dir()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of this process and of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return time.process_time() + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def interleaved(functions: dict[str, Callable[[], object]], repeats: int, pid: int) -> dict[str, tuple[float, float]]:
    """(median wall seconds, median CPU seconds of this process and `pid`) of each
    function, run round-robin `repeats` times after one warm-up round."""
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
    for round_index in range(repeats + 1):
        for name, function in functions.items():
            wall, cpu = time.perf_counter(), cpu_seconds(pid)
            function()
            if round_index:
                timings[name].append((time.perf_counter() - wall, cpu_seconds(pid) - cpu))
    return {
        name: (statistics.median(t[0] for t in values), statistics.median(t[1] for t in values))
        for name, values in timings.items()
    }
