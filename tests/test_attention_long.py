"""Long inputs: StreamAttention of a 4,096-token input on a tiny GPT-2 with 4,096
positions streams with the server's memory bounded by a few layers' maps
(`attention.map_memory_bound`), with and without a row range; MiniLM at its 512-token
limit answers a row range with a reduction and top_k exactly as eager attention.

Memory is the process's peak resident set (VmHWM, reset through /proc/self/clear_refs)
during the call above a baseline taken after the server started and warmed up; the
client discards every message as it arrives, so what stays resident is the server's,
and pauses after each layer, so a server that did not wait for its reader would pile
layers up.
Holding every layer's maps (12 x 64 MiB) would exceed the bound, and so would computing
every row's probabilities for a 256-row range.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import InProcessServer, minilm_dir, reference_inputs, reference_model, reference_tokenizer
from introspect.methods.attention import map_memory_bound
from introspect_client import Client
from introspect_contract.tensors import decode_tensor

LONG_TOKENS = 4096
LONG_LAYERS = 12
LONG_IDS = [1000 + position % 20000 for position in range(LONG_TOKENS)]
MIB = 1024 * 1024
# Interpreter, gRPC buffers, the forward's own activations ([4096, 16] per layer) and
# one-time allocations of a first call: measured at 30-40 MiB.
SLACK_BYTES = 64 * MIB
READER_PAUSE_SECONDS = 0.3  # per layer: longer than the server takes to compute one
STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")

pytestmark = pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux's /proc/self/clear_refs to reset VmHWM")


def _status_bytes(key: str) -> int:
    """A /proc/self/status memory figure (VmRSS, VmHWM) in bytes."""
    match = re.search(rf"^{key}:\s+(\d+) kB", STATUS.read_text(), re.MULTILINE)
    assert match is not None, key
    return int(match.group(1)) * 1024


def build_long_gpt2(root: Path) -> Path:
    """A tiny random GPT-2 with 4,096 positions (12 layers x 1 head, width 16) and the
    MiniLM tokenizer allowed 4,096 tokens."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=LONG_TOKENS)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_positions=LONG_TOKENS, n_embd=16, n_layer=LONG_LAYERS,
                        n_head=1, bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    path = root / "gpt2-4k"
    GPT2LMHeadModel(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def long_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, int]]:
    """A client of a server of the 4k GPT-2 alone (no result cache), warmed up, and the
    resident bytes after the warm-up: the baseline of every measurement."""
    server = InProcessServer(f"--model=long={build_long_gpt2(tmp_path_factory.mktemp('long'))}", "--cache-bytes=0")
    with Client(server.address) as client:
        for _ in client.stream_attention([LONG_IDS], model="long", query_start=-1, cache="bypass"):
            pass
        yield client, _status_bytes("VmRSS")
    assert server.stop() == 0


@pytest.mark.parametrize(("query_start", "rows"), [(-256, 256), (0, LONG_TOKENS)])  # the small case first
def test_long_input_streams_within_the_stated_memory_bound(
    long_client: tuple[Client, int], query_start: int, rows: int
) -> None:
    client, baseline = long_client
    CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    first_row = LONG_TOKENS - rows
    covered = {layer: 0 for layer in range(LONG_LAYERS)}
    for message in client.stream_attention([LONG_IDS], model="long", query_start=query_start, cache="bypass"):
        if message.WhichOneof("payload") != "chunk":
            continue
        chunk = message.chunk
        values = decode_tensor(chunk.values)[0]  # [rows of the chunk, keys]
        positions = np.arange(chunk.query_start, chunk.query_end)
        assert chunk.query_start >= first_row and chunk.query_end <= LONG_TOKENS
        np.testing.assert_allclose(values.sum(axis=-1), 1.0, atol=1e-4)  # probabilities over the keys
        assert not values[np.arange(LONG_TOKENS)[None, :] > positions[:, None]].any()  # causal: no later key
        covered[chunk.layer] += len(positions)
        if chunk.layer_complete:
            time.sleep(READER_PAUSE_SECONDS)  # a slow reader: a server that ran ahead would pile up layers
    peak = _status_bytes("VmHWM") - baseline
    map_bytes = 1 * rows * LONG_TOKENS * 4  # [heads 1, rows, keys] float32
    bound = map_memory_bound(map_bytes) + SLACK_BYTES
    every_layer = LONG_LAYERS * 1 * LONG_TOKENS * LONG_TOKENS * 4  # what holding all full maps would take
    assert covered == {layer: rows for layer in range(LONG_LAYERS)}
    assert bound < every_layer
    assert peak <= bound, f"peak {peak / MIB:.0f} MiB above the bound {bound / MIB:.0f} MiB"


def test_minilm_at_its_512_limit_with_a_row_range_and_a_reduction(client: Client, model_dirs: dict[str, Path]) -> None:
    tokenizer = reference_tokenizer(model_dirs, "minilm")
    text = " ".join(["attention maps of long inputs stay bounded"] * 80)
    ids = tokenizer(text, truncation=True, max_length=512)["input_ids"]
    assert len(ids) == 512
    encoded = reference_inputs(model_dirs, "minilm", tokenizer.decode(ids[1:-1]))
    assert encoded["input_ids"][0].tolist() == ids
    with torch.no_grad():
        reference = torch.stack(reference_model(model_dirs, "minilm")(**encoded, output_attentions=True).attentions)
    mean = reference[:, 0, :, -64:].mean(dim=1).numpy()  # [layers, rows 448..511, keys]
    k = 8
    item = client.attention(ids, model="minilm", view="head_mean", top_k=k, query_start=-64, layers=[0, 5])[0]
    assert item.query_start == 448
    for layer in (0, 5):
        assert item.layers[layer].shape == (1, 64, k)
        np.testing.assert_allclose(item.layers[layer][0], -np.sort(-mean[layer], axis=-1)[:, :k], atol=1e-4, rtol=0)
        picked = np.take_along_axis(mean[layer], item.key_indices[layer][0].astype(np.int64), axis=-1)
        np.testing.assert_allclose(picked, item.layers[layer][0], atol=1e-4, rtol=0)
