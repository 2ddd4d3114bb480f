"""Measures the candidate MACs of cache values, HMAC-SHA256, keyed BLAKE2b and Poly1305
under a one-time key derived with HMAC-SHA256 from a nonce (the one used), on
1, 2 and 4 MB values (the sizes of the cache benchmarks), and prints a Markdown table of
median milliseconds per value (the figures in README.md, "Result cache").

    python tests/benchmarks/bench_mac.py [--repeats 31]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.poly1305 import Poly1305


def poly1305(key: bytes, value: bytes) -> bytes:
    """Poly1305 under HMAC-SHA256(key, label + nonce), as integrity.tag computes it."""
    one_time_key = hmac.new(key, b"introspect cache poly1305 key\x00" + os.urandom(16), hashlib.sha256).digest()
    return Poly1305.generate_tag(one_time_key, value)

MACS: dict[str, Callable[[bytes, bytes], bytes]] = {
    "HMAC-SHA256": lambda key, value: hmac.new(key, value, hashlib.sha256).digest(),
    "keyed BLAKE2b-256": lambda key, value: hashlib.blake2b(value, key=key, digest_size=32).digest(),
    "Poly1305, one-time key": poly1305,
}


def median_ms(mac: Callable[[bytes, bytes], bytes], key: bytes, value: bytes, repeats: int) -> float:
    """Median wall time of one MAC of `value`, in milliseconds."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        mac(key, value)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1000


def main() -> None:
    """Prints the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=31)
    repeats = parser.parse_args().repeats
    key = os.urandom(32)
    print("| value | " + " | ".join(f"{name} (ms)" for name in MACS) + " |")
    print("| --- |" + " --- |" * len(MACS))
    for megabytes in (1, 2, 4):
        value = os.urandom(megabytes * 1_000_000)
        cells = [f"{median_ms(mac, key, value, repeats):.2f}" for mac in MACS.values()]
        print(f"| {megabytes} MB | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
