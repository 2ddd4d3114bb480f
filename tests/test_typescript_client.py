"""The TypeScript client (clients/typescript): its generated code is current, it compiles,
and its node tests pass against a real server (they start one with
clients/typescript/test/fixture_server.py and compare with the Python client).

scripts/test.sh installs its dependencies (`npm ci` in clients/typescript) before pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "typescript"
NODE_TIMEOUT_SECONDS = 300


def _run(*command: str, timeout: float = NODE_TIMEOUT_SECONDS) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        command, check=False, cwd=PACKAGE, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "INTROSPECT_PYTHON": sys.executable, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")},
    )
    print(done.stdout)
    print(done.stderr, file=sys.stderr)
    return done


@pytest.fixture(scope="module")
def built() -> None:
    """Compiles the client and its tests with the pinned tsc (fails when npm ci was not run)."""
    assert shutil.which("node"), "node (20 or later) is required for the TypeScript client's tests"
    assert (PACKAGE / "node_modules" / ".bin" / "tsc").exists(), (
        "clients/typescript/node_modules is missing: run `npm ci` in clients/typescript (scripts/test.sh does)"
    )
    done = _run("node", "node_modules/typescript/bin/tsc", "-p", "tsconfig.json")
    assert done.returncode == 0, f"tsc failed:\n{done.stdout}{done.stderr}"


def test_generated_typescript_is_current(built: None) -> None:
    done = _run("node", "scripts/generate.mjs", "--check", timeout=120)
    assert done.returncode == 0, f"stale clients/typescript/src/gen: run `npm run generate` there\n{done.stdout}{done.stderr}"


def test_typescript_client_node_tests(built: None) -> None:
    tests = sorted(str(path.relative_to(PACKAGE)) for path in (PACKAGE / "dist" / "test").glob("*.test.js"))
    assert tests, "no compiled tests under clients/typescript/dist/test"
    done = _run("node", "--test", "--test-reporter=spec", *tests)
    assert done.returncode == 0, f"node --test failed:\n{done.stdout}{done.stderr}"
