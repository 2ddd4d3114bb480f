"""Progress of long streams, one line per milestone, for the CLI (stderr) or any caller:
pass a `StreamProgress` as a client's `on_message`, which sees every streamed message.

Milestones: a layer done (attention, per input; head ablation; logit lens; patching, per
patch point), an integrated-gradients refinement or SmoothGrad batch with its step count
and completeness delta, occlusion spans as their tokens finish, and the end of the
stream.
"""

from __future__ import annotations

import time
from typing import Any, TextIO


class StreamProgress:
    """Writes a line to `out` for each milestone of the messages it is called with."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started = time.monotonic()

    def __call__(self, message: Any) -> None:
        """Takes the next message of a stream (any Stream*Response)."""
        kind = message.WhichOneof("payload")
        if kind is None or kind == "header":
            return
        line = self._line(kind, getattr(message, kind))
        if line:
            print(f"[{time.monotonic() - self._started:6.1f}s] {line}", file=self._out, flush=True)

    @staticmethod
    def _line(kind: str, payload: Any) -> str:
        """The line for one payload, or "" when it is no milestone."""
        name = type(payload).DESCRIPTOR.name
        if name == "AttentionChunk":
            return f"attention: input {payload.input_index}, layer {payload.layer} done" if payload.layer_complete else ""
        if name == "SaliencyChunk":
            return _saliency_line(payload)
        if name == "LayerAblation":
            return f"ablation: layer {payload.layer} done"
        if name == "LogitLensLayer":
            return f"logit lens: layer {payload.layer} done"
        if name == "PatchingLayer":
            return f"patching: layer {payload.layer} done"
        if kind in ("joint", "importance", "knockout", "logit_attribution", "correlation"):
            return f"{kind.replace('_', ' ')}: received"
        return ""


def _saliency_line(chunk: Any) -> str:
    """A refinement (steps and delta), a span of finished tokens, or the end."""
    if chunk.steps and not chunk.final:
        return f"saliency: {chunk.steps} steps, convergence delta {chunk.convergence_delta:.4g}"
    if not chunk.final:
        return f"saliency: tokens [{chunk.token_start}, {chunk.token_end}) done"
    if chunk.steps:
        state = "converged" if chunk.converged else "not converged"
        return f"saliency: done, {chunk.steps} steps, convergence delta {chunk.convergence_delta:.4g} ({state})"
    return "saliency: done"
