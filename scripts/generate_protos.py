"""Regenerate the Python code for protos/ into the contract package (contract/python/introspect_contract).

Run: python scripts/generate_protos.py            (writes the generated files)
     python scripts/generate_protos.py --check    (exit 1 if the committed files are stale)

Generated imports are rewritten to be package-relative, so the generated modules live
inside ``introspect_contract`` (imported by the client and the server alike) and never
clash with the server package ``introspect``.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUTPUT_DIR = ROOT / "contract" / "python" / "introspect_contract"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
PROTO_FILES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in PROTO_ROOT.rglob("*.proto"))
_ABSOLUTE_IMPORT = re.compile(r"^from introspect\.v1 import (\w+_pb2)", re.MULTILINE)


def generate(into: Path) -> dict[str, str]:
    """Runs protoc over every .proto and returns {file name: rewritten source}."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as scratch:
        arguments = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *PROTO_FILES,
        ]
        if protoc.main(arguments) != 0:
            raise SystemExit("protoc failed")
        generated = {}
        for path in sorted(Path(scratch).rglob("*.py*")):
            generated[path.name] = _ABSOLUTE_IMPORT.sub(r"from . import \1", path.read_text())
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed code is stale")
    arguments = parser.parse_args()
    generated = generate(OUTPUT_DIR)
    if arguments.check:
        stale = [
            name
            for name, text in generated.items()
            if not (OUTPUT_DIR / name).exists() or (OUTPUT_DIR / name).read_text() != text
        ]
        extra = {p.name for p in OUTPUT_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES)} - set(generated)
        if stale or extra:
            print(f"generated code is stale: {sorted(stale) + sorted(extra)}; run scripts/generate_protos.py")
            return 1
        return 0
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in generated.items():
        (OUTPUT_DIR / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
