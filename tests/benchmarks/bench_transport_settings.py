"""How message size and HTTP/2 settings change gRPC's cost for one stream of attention maps.

    python tests/benchmarks/bench_transport_settings.py [--repeats 9] [--totals 4700000 75000000]

For each total (4.7 MB: MiniLM's maps at 128 tokens in float32; 75 MB: at 512 tokens) a
bare grpc.aio server (transport_floor.py) streams pre-serialized StreamAttentionResponse messages of 128 KiB,
512 KiB or 2 MiB to the raw stub, with gRPC's default settings and with a larger HTTP/2
lookahead (the stream's flow-control window, grpc.http2.lookahead_bytes) and a larger
maximum frame (grpc.http2.max_frame_size) on both ends. It reports the median wall time
and the CPU time of the sending and the receiving process per stream: the server's
chunk size (rpc/encode.PREFERRED_CHUNK_BYTES) and its channel options were chosen from
this table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from timing import markdown_table  # noqa: E402
from transport_floor import floor_server  # noqa: E402

SETTINGS: dict[str, list[tuple[str, int]]] = {
    "defaults": [],
    "lookahead 4 MiB": [("grpc.http2.lookahead_bytes", 4 << 20)],
    "max frame 1 MiB": [("grpc.http2.max_frame_size", 1 << 20)],
    "both": [("grpc.http2.lookahead_bytes", 4 << 20), ("grpc.http2.max_frame_size", 1 << 20)],
}
CHUNKS = (128 << 10, 512 << 10, 2 << 20)


def measure(total: int, chunk: int, options: list[tuple[str, int]], repeats: int) -> tuple[float, float, float]:
    """(median wall ms, sender CPU ms, receiver CPU ms) per stream of `total` bytes in
    `chunk`-byte messages."""
    with floor_server([chunk] * max(total // chunk, 1), options) as floor:
        for _ in range(2):
            floor.stream()
        sender, receiver, walls = process_cpu(floor.pid), time.process_time(), []
        for _ in range(repeats):
            started = time.perf_counter()
            floor.stream()
            walls.append(time.perf_counter() - started)
        return (statistics.median(walls) * 1000, (process_cpu(floor.pid) - sender) * 1000 / repeats,
                (time.process_time() - receiver) * 1000 / repeats)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--totals", type=int, nargs="+", default=[4_700_000, 75_000_000])
    arguments = parser.parse_args()
    rows = []
    for total in arguments.totals:
        for name, options in SETTINGS.items():
            for chunk in CHUNKS:
                wall, sender, receiver = measure(total, chunk, options, arguments.repeats)
                rows.append([f"{total / 1e6:.1f}", name, f"{chunk >> 10} KiB", f"{wall:.1f}", f"{sender:.1f}",
                             f"{receiver:.1f}"])
    print(f"median of {arguments.repeats} streams; CPU per stream\n")
    print(markdown_table(["MB", "settings", "message", "wall ms", "sender CPU ms", "receiver CPU ms"], rows))


if __name__ == "__main__":
    main()
