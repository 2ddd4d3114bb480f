"""A caller that reads only the header of a large result, on a real server process.

All attention maps of four 512-token MiniLM inputs are 302 MB (24 items of 12.6 MB: 12
heads x 512 x 512 float32 per input and layer). The caller reads the header and then
nothing. What is checked: the server's resident memory (/proc/PID/status VmRSS) grows by
less than the stated bound (README, "Cancellation and backpressure": HANDOFF_ITEMS
waiting items, the one being written, what gRPC's transport holds and one layer's
tensors), far below the 302 MB an unbounded hand-off buffers; after
--stall-timeout-seconds the worker is free (a follow-up call starts at once, though the
stalled call is still open), and the stalled caller, reading again, gets
RESOURCE_EXHAUSTED saying the reader stalled. Nothing is logged as an ERROR.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from conftest import start_server
from introspect_client import Client, IntrospectError

STALL_SECONDS = 1.5
LONG_TEXT = "the cat sat on the mat and looked at the dog " * 60  # > 512 tokens: truncated to 512
INPUTS = [f"{index} {LONG_TEXT}" for index in range(4)]
TOTAL_BYTES = 4 * 6 * 12 * 512 * 512 * 4  # 302 MB of maps
RSS_BOUND_BYTES = 160 * 1024 * 1024  # the stated bound (about 105 MB here), loosely
FOLLOW_UP_BOUND_SECONDS = 2.5


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_stalled_reader_costs_bounded_memory_then_is_ended_and_frees_the_worker(model_dirs: dict[str, Path]) -> None:
    server = start_server(
        f"--model=minilm={model_dirs['minilm']}", "--cache-bytes=0", f"--stall-timeout-seconds={STALL_SECONDS}"
    )
    try:
        with Client(server.address, timeout=60) as client:
            client.attention(INPUTS, truncate=True)  # warm-up: the allocator's pools and the model's pages
            before = _rss(server.process.pid)
            stalled = client.stream_attention(INPUTS, truncate=True)
            header = next(stalled)
            assert header.HasField("header")
            peak = before
            started = time.monotonic()
            while time.monotonic() - started < STALL_SECONDS + 0.5:
                peak = max(peak, _rss(server.process.pid))
                time.sleep(0.05)
            growth = peak - before
            print(f"server RSS grew by {growth / 2**20:.0f} MiB while the reader stalled")
            assert growth < RSS_BOUND_BYTES < TOTAL_BYTES

            follow_up = client.stream_attention("a short one", layers=[0])
            asked = time.monotonic()
            assert next(follow_up).HasField("header")
            assert time.monotonic() - asked < FOLLOW_UP_BOUND_SECONDS
            follow_up.close()

            with pytest.raises(IntrospectError) as ended:
                for _ in stalled:
                    pass
            assert ended.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "reader stalled" in ended.value.message
    finally:
        assert server.stop() == 0
    log = "".join(server.output)
    assert " ERROR " not in log, log
