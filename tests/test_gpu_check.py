"""The GPU check (tests/benchmarks/gpu_check.sh) on CPU, so that it does not rot between
the rare sessions with a GPU: its parity path, float32, two architectures, prints the
table with passing rows; and the parity helper fails (exit 1, FAIL rows) when a
difference exceeds its tolerance (a negative one, which nothing can meet).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "benchmarks" / "gpu_check.sh"
HELPER = ROOT / "tests" / "benchmarks" / "gpu_parity.py"
PYTHONPATH = os.pathsep.join(str(ROOT / part) for part in ("service", "clients/python", "contract/python"))
ENVIRONMENT = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": PYTHONPATH, "HF_HUB_OFFLINE": "1"}


def table_rows(output: str) -> list[list[str]]:
    """The summary table's body rows, as cells."""
    lines = output[output.index("| check | dtype | result | figure |"):].splitlines()[2:]
    return [[cell.strip() for cell in line.strip()[1:-1].split(" | ")] for line in lines if line.startswith("| ")]


def test_the_gpu_check_parity_path_runs_on_cpu_and_prints_its_table() -> None:
    finished = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--parity-only", "--no-install",
         "--architectures", "bert llama", "--dtypes", "float32"],
        capture_output=True, text=True, timeout=300, env=ENVIRONMENT, cwd=ROOT,
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "GPU check on CPU" in finished.stdout
    rows = table_rows(finished.stdout)
    assert [(row[0].split(":")[0], row[1], row[2]) for row in rows] == [
        ("parity bert", "float32", "pass"), ("parity bert", "float32", "pass"),
        ("parity llama", "float32", "pass"), ("parity llama", "float32", "pass"),
    ], rows
    assert all(row[3].startswith("max diff ") and "(tol " in row[3] for row in rows), rows


def test_the_parity_helper_fails_when_a_difference_exceeds_its_tolerance() -> None:
    finished = subprocess.run(
        [sys.executable, str(HELPER), "--device", "cpu", "--architectures", "gpt2", "--dtypes", "float32",
         "--tolerance", "-1"],
        capture_output=True, text=True, timeout=300, env=ENVIRONMENT, cwd=ROOT,
    )
    assert finished.returncode == 1, finished.stdout + finished.stderr
    rows = table_rows(finished.stdout)
    assert len(rows) == 2 and all(row[2] == "FAIL" for row in rows), rows
