"""Progress of long streams in the CLI (--progress, or stderr a terminal) and through a
client's on_message, against the session's real server."""

from __future__ import annotations

import io
import re

from test_client_cli import run_cli

from introspect_client import Client, targets
from introspect_client.progress import StreamProgress

TEXT = "The cat sat on the mat."


def test_cli_progress_lists_layers_and_refinements(address: str) -> None:
    finished = run_cli("attention", "--server", address, "--model", "gpt2", "--text", TEXT, "--json", "--progress")
    assert finished.returncode == 0, finished.stderr
    assert re.findall(r"attention: input 0, layer (\d+) done", finished.stderr) == ["2"]  # the last, by default
    finished = run_cli("lens", "--server", address, "--model", "gpt2", "--text", TEXT, "--json", "--progress")
    assert finished.returncode == 0, finished.stderr
    assert re.findall(r"logit lens: layer (\d+) done", finished.stderr) == ["0", "1", "2"]
    finished = run_cli("saliency", "--server", address, "--method", "ig", "--text", TEXT, "--target", "norm",
                       "--tolerance", "1e-9", "--steps", "64", "--json", "--progress")
    assert finished.returncode == 0, finished.stderr
    refinements = re.findall(r"saliency: (\d+) steps, convergence delta (\S+)", finished.stderr)
    assert len(refinements) >= 2 and [int(steps) for steps, _ in refinements] == sorted(int(s) for s, _ in refinements)
    assert "saliency: done" in finished.stderr
    finished = run_cli("ablate", "--server", address, "--model", "classifier", "--text", TEXT, "--target", "class",
                       "--json", "--progress")
    assert finished.returncode == 0, finished.stderr
    assert re.findall(r"ablation: layer (\d+) done", finished.stderr) == ["0", "1"]


def test_cli_without_a_terminal_prints_no_progress(address: str) -> None:
    finished = run_cli("attention", "--server", address, "--model", "gpt2", "--text", TEXT, "--json")
    assert finished.returncode == 0 and finished.stderr == "", finished.stderr
    finished = run_cli("attention", "--server", address, "--model", "gpt2", "--text", TEXT, "--json", "--no-progress")
    assert finished.returncode == 0 and finished.stderr == "", finished.stderr


def test_on_message_sees_every_streamed_message(address: str) -> None:
    lines = io.StringIO()
    with Client(address) as client:
        client.on_message = StreamProgress(lines)
        result = client.saliency(TEXT, model="minilm", method="ig", target=targets.embedding_norm(), steps=8,
                                 tolerance=1e-9)
    refinements = re.findall(r"saliency: (\d+) steps", lines.getvalue())
    assert refinements and [int(steps) for steps in refinements] == [r.steps for r in result.refinements[:-1]]
