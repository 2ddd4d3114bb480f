"""On demand: cancel-to-free latency per method at 512 tokens (MiniLM; the tiny GPT-2's
128 for the logit lens), printed as a table.

For each method: start the call, read its header, let it compute for a moment, cancel,
and time until a short follow-up call's header arrives from the device's only worker
(median of --repeats). Run from the repository root:

    PYTHONPATH=service:clients/python:contract/python:tests python tests/load/cancellation.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

from conftest import InProcessServer, build_tiny_models, minilm_dir  # noqa: E402
from introspect_client import Client  # noqa: E402
from test_cancellation import CALLS, _seconds_until_the_worker_starts_another_call  # noqa: E402


def main() -> None:
    """Prints method | median cancel-to-free seconds | worst."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--running-seconds", type=float, default=0.5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        gpt2 = build_tiny_models(Path(root))["gpt2"]
        server = InProcessServer(f"--model=minilm={minilm_dir()}", f"--model=gpt2={gpt2}", "--cache-bytes=0")
        try:
            print("| method | cancel to free, median (s) | worst (s) |\n|---|---|---|")
            with Client(server.address) as client:
                for name, start in CALLS.items():
                    waits = []
                    for _ in range(arguments.repeats):
                        stream = start(client, None)
                        next(stream)
                        time.sleep(arguments.running_seconds)
                        stream.close()
                        waits.append(_seconds_until_the_worker_starts_another_call(client))
                    print(f"| {name} | {statistics.median(waits):.3f} | {max(waits):.3f} |", flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
