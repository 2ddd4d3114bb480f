"""The memory one request may use, and the one estimate of what a request needs.

Every method describes its work as a Footprint: bytes it needs whatever its batch size
(the inputs, what it keeps across batches, the result it returns), bytes per batch row
(activations, from `activation_bytes`) and the rows its work has in all. `RequestBudget.fit`
turns that into the batch size that runs: the request's own (lowered when over the
budget), or the largest that fits when it asks for none; and refuses with
ResourceExhausted, saying what to lower, when not even one row fits. Automatic batch
sizes (saliency, head ablation) come from here too, so there is one budget and one
estimate.

The estimate is deliberately rough and on the safe side: hidden states, the query, key,
value and attention outputs, the MLP's intermediate activations, float32 attention
probabilities (the probe's, and the scores behind them), per layer alive at once; with
gradients every layer's until the backward pass, and as much again for their gradients.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .errors import ResourceExhausted

if TYPE_CHECKING:
    from .models import ModelDescription

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
CPU_MEMORY_SHARE = 0.25
"""Default budget of one request on the CPU: this share of the machine's memory."""
ACCELERATOR_MEMORY_SHARE = 0.5
"""Default budget of one request on an accelerator: this share of its free memory once
the models are loaded."""
MAX_AUTO_BATCH = 64
"""The largest batch chosen automatically (larger batches stop paying off)."""
MAX_AUTO_BATCH_TOKENS = 8192
"""Tokens (rows x tokens per row) of a batch chosen automatically: one layer of it takes
a fraction of a second on a CPU, so a cancel (checked after every layer's attention and
every layer) frees the worker within 0.5 s at default settings. An explicit batch_size
may go past it, within the memory budget."""
_FALLBACK_CPU_BYTES = 4 << 30
_ALLOCATOR_MESSAGES = ("can't allocate memory", "out of memory", "not enough memory")


@dataclass(frozen=True)
class Footprint:
    """What one request's work needs: `fixed` bytes whatever the batch size, `per_row`
    bytes per batch row, and `rows` rows in all (the largest batch that helps).

    `field` and `advice` name what a caller should lower when even one row does not fit."""

    fixed: int
    per_row: int
    rows: int
    field: str
    advice: str
    tokens_per_row: int = 0  # caps automatic batches at MAX_AUTO_BATCH_TOKENS (0: no cap)


def activation_bytes(description: ModelDescription, tokens: int, *, gradients: bool,
                     attention_rows: int | None = None) -> int:
    """Bytes one batch row of `tokens` tokens keeps alive through a forward pass (and,
    with `gradients`, its backward pass); `attention_rows`: the query rows whose attention
    probabilities are computed (default: all `tokens`)."""
    hidden = description.hidden_size
    intermediate = description.intermediate_size or 4 * hidden
    itemsize = DTYPE_BYTES.get(description.dtype, 4)
    rows = tokens if attention_rows is None else attention_rows
    per_layer = tokens * (8 * hidden + 2 * intermediate) * itemsize + 3 * description.num_heads * rows * tokens * 4
    if gradients:
        return 2 * per_layer * (description.num_layers + 1)
    return 2 * per_layer


def output_bytes(description: ModelDescription, tokens: int, positions: int = 1) -> int:
    """Bytes of one row's outputs: the last hidden states, and float32 logits at
    `positions` positions with an LM head (classifier logits are negligible)."""
    from .kinds import KINDS

    logits = positions * description.vocab_size * 4 if KINDS[description.kind].has_lm_head else 0
    return tokens * description.hidden_size * 4 + 2 * logits


def mib(count: int) -> str:
    """Bytes as MiB, for messages."""
    return f"{count / MIB:.1f} MiB"


@dataclass(frozen=True)
class RequestBudget:
    """Limits of one request's work on a model: `bytes` of memory (--max-request-bytes)
    and `batch_tokens` tokens in one padded batch (--max-batch-tokens)."""

    bytes: int
    batch_tokens: int

    def fit(self, footprint: Footprint, requested: int = 0, *, cap: int = MAX_AUTO_BATCH) -> int:
        """The batch size that runs: `requested` lowered to what fits (0: the largest
        that fits, at most `cap` and MAX_AUTO_BATCH_TOKENS tokens), never more than
        `footprint.rows`. Raises ResourceExhausted when one row does not fit."""
        self.require(footprint, rows=1)
        fits = (self.bytes - footprint.fixed) // max(footprint.per_row, 1)
        if requested <= 0 and footprint.tokens_per_row:
            cap = min(cap, max(1, MAX_AUTO_BATCH_TOKENS // footprint.tokens_per_row))
        wanted = requested if requested > 0 else cap
        return max(1, min(wanted, fits, footprint.rows))

    def require(self, footprint: Footprint, rows: int | None = None) -> None:
        """Raises ResourceExhausted unless `rows` rows (default all of them, for work that
        cannot be split) fit in the budget."""
        rows = footprint.rows if rows is None else rows
        needed = footprint.fixed + rows * footprint.per_row
        if needed > self.bytes:
            raise ResourceExhausted(
                footprint.field,
                f"needs about {mib(needed)} ({mib(footprint.fixed)} fixed + {rows} x {mib(footprint.per_row)} "
                f"per row) but one request may use {mib(self.bytes)} (--max-request-bytes); {footprint.advice}",
            )

    def check_batch_tokens(self, inputs: int, longest: int, field: str) -> None:
        """Raises ResourceExhausted when `inputs` padded to `longest` tokens exceed
        --max-batch-tokens."""
        if inputs * longest > self.batch_tokens:
            raise ResourceExhausted(
                field,
                f"{inputs} inputs padded to {longest} tokens make {inputs * longest} tokens in one batch; "
                f"the server takes at most {self.batch_tokens} (--max-batch-tokens): send fewer or shorter inputs",
            )


def default_request_bytes(device: torch.device) -> int:
    """The default budget of one request on `device`: a share of the accelerator's free
    memory, or of the machine's memory (MemTotal) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * ACCELERATOR_MEMORY_SHARE)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(int(line.split()[1]) * 1024 * CPU_MEMORY_SHARE)
    except OSError:
        pass
    return _FALLBACK_CPU_BYTES


def is_allocator_failure(error: BaseException) -> bool:
    """Whether `error` is torch failing to allocate memory (CUDA or CPU)."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _ALLOCATOR_MESSAGES)


def release_cached_memory(device: torch.device) -> None:
    """Hands the allocator's cached blocks back after a failed allocation."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
