"""StreamAttention through a real server and the real client, against transformers' eager
attention (`output_attentions=True`) on the same weights and inputs."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import InProcessServer, reference_inputs, reference_model, reference_tokenizer
from introspect_client import Client, IntrospectError, attention_request
from introspect_contract import pb
from introspect_contract import pb_grpc

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention is all you need.",
    "Hi",
]
TOLERANCE = 1e-4


def eager_attentions(model_dirs: dict[str, Path], name: str, texts: list[str]) -> list[np.ndarray]:
    """Per text: [layers, heads, tokens, tokens] from eager attention, each text run alone
    (no padding), so padded server batches are checked against unpadded references."""
    model = reference_model(model_dirs, name)
    maps = []
    for text in texts:
        encoded = reference_inputs(model_dirs, name, text)
        with torch.no_grad():
            output = model(**encoded, output_attentions=True)
        maps.append(torch.stack(output.attentions)[:, 0].numpy())
    return maps


@pytest.mark.parametrize("name", ["minilm", "gpt2", "llama"])
def test_maps_equal_eager_attention_in_a_padded_batch(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    references = eager_attentions(model_dirs, name, TEXTS)
    result = client.attention(TEXTS, model=name)
    assert len(result) == len(TEXTS)
    tokenizer = reference_tokenizer(model_dirs, name)
    for text, reference, item in zip(TEXTS, references, result.inputs):
        assert item.tokens == tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
        stacked = item.stacked()
        assert stacked.shape == reference.shape
        np.testing.assert_allclose(stacked, reference, atol=TOLERANCE, rtol=0)


def test_selected_layers_and_heads(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = eager_attentions(model_dirs, "minilm", TEXTS[:1])[0]
    result = client.attention(TEXTS[0], model="minilm", layers=[4, 1], heads=[7, 2])
    item = result[0]
    assert sorted(item.layers) == [1, 4]
    assert item.heads == [7, 2]
    for layer in (1, 4):
        np.testing.assert_allclose(item.layers[layer], reference[layer][[7, 2]], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("name", ["minilm", "llama"])
def test_head_mean_and_max_equal_numpy_reductions(client: Client, model_dirs: dict[str, Path], name: str) -> None:
    references = eager_attentions(model_dirs, name, TEXTS[:2])
    heads = [0, 1, 3]
    mean = client.attention(TEXTS[:2], model=name, view="head_mean", heads=heads)
    maximum = client.attention(TEXTS[:2], model=name, view="head_max", heads=heads)
    for index, reference in enumerate(references):
        np.testing.assert_allclose(mean[index].stacked()[:, 0], reference[:, heads].mean(axis=1), atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(maximum[index].stacked()[:, 0], reference[:, heads].max(axis=1), atol=TOLERANCE, rtol=0)
        assert mean[index].heads == []


def numpy_rollout(maps: np.ndarray, residual_weight: float) -> list[np.ndarray]:
    """Abnar & Zuidema (2020) rollout after each layer, written independently: mean over
    heads, mix with identity, renormalise rows, multiply from the first layer on."""
    rollouts = []
    current = np.eye(maps.shape[-1])
    for layer_maps in maps.astype(np.float64):
        mixed = (1 - residual_weight) * layer_maps.mean(axis=0) + residual_weight * np.eye(maps.shape[-1])
        mixed /= mixed.sum(axis=-1, keepdims=True)
        current = mixed @ current
        rollouts.append(current.copy())
    return rollouts


@pytest.mark.parametrize(("name", "weight"), [("minilm", None), ("gpt2", 0.3)])
def test_rollout_equals_numpy_computation(
    client: Client, model_dirs: dict[str, Path], name: str, weight: float | None
) -> None:
    references = eager_attentions(model_dirs, name, TEXTS[:2])
    layers = [0, 2]
    result = client.attention(TEXTS[:2], model=name, view="rollout", layers=layers, rollout_residual_weight=weight)
    for index, reference in enumerate(references):
        expected = numpy_rollout(reference, 0.5 if weight is None else weight)
        assert sorted(result[index].layers) == layers
        for layer in layers:
            np.testing.assert_allclose(result[index].layers[layer][0], expected[layer], atol=TOLERANCE, rtol=0)


def test_top_k_keys_equal_numpy_sort(client: Client, model_dirs: dict[str, Path]) -> None:
    reference = eager_attentions(model_dirs, "minilm", TEXTS[:1])[0]
    k = 3
    result = client.attention(TEXTS[0], model="minilm", layers=[2], top_k=k)[0]
    values, indices = result.layers[2], result.key_indices[2]
    assert values.shape == indices.shape == (12, reference.shape[-1], k)
    expected_values = -np.sort(-reference[2], axis=-1)[..., :k]
    np.testing.assert_allclose(values, expected_values, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(reference[2], indices.astype(np.int64), axis=-1), values, atol=TOLERANCE)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float16", 1e-3), ("bfloat16", 8e-3)])
def test_reduced_precision_values(client: Client, model_dirs: dict[str, Path], dtype: str, tolerance: float) -> None:
    reference = eager_attentions(model_dirs, "minilm", TEXTS[:1])[0]
    item = client.attention(TEXTS[0], model="minilm", layers=[0], dtype=dtype)[0]
    values = item.layers[0].astype(np.float32)
    np.testing.assert_allclose(values, reference[0], atol=tolerance, rtol=0)
    expected = torch.from_numpy(reference[0]).to(getattr(torch, dtype)).float().numpy()
    np.testing.assert_array_equal(values, expected)


def test_text_pair_and_token_id_inputs(client: Client, model_dirs: dict[str, Path]) -> None:
    tokenizer = reference_tokenizer(model_dirs, "minilm")
    model = reference_model(model_dirs, "minilm")
    encoded = tokenizer("Where is Paris?", "Paris is in France.", return_tensors="pt")
    with torch.no_grad():
        reference = torch.stack(model(**encoded, output_attentions=True).attentions)[:, 0].numpy()
    pair = client.attention(("Where is Paris?", "Paris is in France."), model="minilm")[0]
    np.testing.assert_allclose(pair.stacked(), reference, atol=TOLERANCE, rtol=0)
    ids = encoded["input_ids"][0].tolist()
    by_ids = client.attention(ids, model="minilm")[0]
    assert by_ids.token_ids == ids
    assert by_ids.tokens == tokenizer.convert_ids_to_tokens(ids)


def test_chunks_stay_under_the_max_message_size(
    small_message_server: InProcessServer, client: Client, model_dirs: dict[str, Path]
) -> None:
    text = " ".join(["transformers look inside"] * 60)  # ~180 tokens: 12 heads x 180 x 180 x 4 B = 1.5 MB/layer
    limit = 65536
    request = pb.StreamAttentionRequest(model="minilm", inputs=[pb.Input(text=pb.TextInput(text=text))], layers=[0, 5])
    channel = grpc.insecure_channel(small_message_server.address)
    messages = list(pb_grpc.IntrospectionStub(channel).StreamAttention(request))
    channel.close()
    chunks = [m.chunk for m in messages if m.HasField("chunk")]
    assert len(chunks) > 20
    assert max(m.ByteSize() for m in messages) <= limit
    assert any(c.query_end - c.query_start < c.values.shape[1] + 1 and len(c.heads) == 1 for c in chunks)
    with Client(small_message_server.address) as small:
        split = small.attention(text, model="minilm", layers=[0, 5])[0]
    whole = client.attention(text, model="minilm", layers=[0, 5])[0]
    for layer in (0, 5):
        np.testing.assert_array_equal(split.layers[layer], whole.layers[layer])
    reference = eager_attentions(model_dirs, "minilm", [text])[0]
    np.testing.assert_allclose(split.layers[5], reference[5], atol=TOLERANCE, rtol=0)


def test_truncation_is_reported(client: Client) -> None:
    long_text = "word " * 600
    with pytest.raises(IntrospectError) as error:
        client.attention(long_text, model="minilm", layers=[0])
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 512" in error.value.message and "truncate" in error.value.message
    item = client.attention(long_text, model="minilm", layers=[0], view="head_mean", truncate=True)[0]
    assert item.truncated
    assert item.original_length == 602
    assert len(item.tokens) == 512
    assert item.tokens[-1] == "[SEP]"
    assert item.layers[0].shape == (1, 512, 512)


@pytest.mark.parametrize(
    ("request_arguments", "code", "fragment"),
    [
        ({"inputs": "hi", "model": "no-such-model"}, grpc.StatusCode.NOT_FOUND, "no-such-model"),
        ({"inputs": "   "}, grpc.StatusCode.INVALID_ARGUMENT, "must not be empty"),
        ({"inputs": "hi", "layers": [6]}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        ({"inputs": "hi", "heads": [-1]}, grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        ({"inputs": "hi", "top_k": 99}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ({"inputs": "hi", "top_k": -1}, grpc.StatusCode.INVALID_ARGUMENT, "top_k"),
        ({"inputs": "hi", "rollout_residual_weight": 1.5}, grpc.StatusCode.INVALID_ARGUMENT, "[0, 1]"),
        ({"inputs": [[5, 99999999]]}, grpc.StatusCode.INVALID_ARGUMENT, "outside the vocabulary"),
    ],
)
def test_bad_requests_get_a_status_that_says_what_to_fix(
    client: Client, request_arguments: dict[str, object], code: grpc.StatusCode, fragment: str
) -> None:
    arguments = {"model": "minilm", **request_arguments}
    inputs = arguments.pop("inputs")
    with pytest.raises(IntrospectError) as error:
        client.attention(inputs, **arguments)  # type: ignore[arg-type]
    assert error.value.code == code
    assert fragment in error.value.message
    assert client.get_model("minilm").num_layers == 6  # still serving


@pytest.mark.parametrize(
    ("malformed", "field"),
    [
        (pb.StreamAttentionRequest(model="minilm"), "inputs"),
        (pb.StreamAttentionRequest(model="minilm", inputs=[pb.Input()]), "inputs[0]"),
        (pb.StreamAttentionRequest(model="minilm", inputs=[pb.Input(token_ids=pb.TokenIds())]), "inputs[0].token_ids"),
        (pb.StreamAttentionRequest(model="minilm", inputs=[pb.Input(text=pb.TextInput(text="a"))], view=42), "view"),
        (pb.StreamAttentionRequest(model="minilm", inputs=[pb.Input(text=pb.TextInput(text="a"))], dtype=pb.DTYPE_INT32), "dtype"),
    ],
)
def test_malformed_protos_name_the_field(address: str, malformed: pb.StreamAttentionRequest, field: str) -> None:
    from grpc_status import rpc_status
    from google.rpc import error_details_pb2

    channel = grpc.insecure_channel(address)
    call = pb_grpc.IntrospectionStub(channel).StreamAttention(malformed)
    with pytest.raises(grpc.RpcError) as error:
        list(call)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error.value)
    assert status is not None
    violations = error_details_pb2.BadRequest()
    status.details[0].Unpack(violations)
    assert violations.field_violations[0].field == field
    channel.close()


def test_empty_requests_of_every_stream_rpc_say_what_is_missing(address: str) -> None:
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.IntrospectionStub(channel)
    calls = {
        "attention": stub.StreamAttention(pb.StreamAttentionRequest(model="minilm")),
        "saliency": stub.StreamSaliency(pb.StreamSaliencyRequest(model="minilm")),
        "ablation": stub.StreamHeadAblation(pb.StreamHeadAblationRequest(model="minilm")),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as error:
            list(call)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "input" in error.value.details() or "target" in error.value.details(), error.value.details()
    channel.close()


def test_deadline_and_cancellation_leave_the_server_serving(address: str, client: Client) -> None:
    # 32 inputs of 502 tokens, head means: ~10 s uncancelled on this 2-core machine, checked
    # at every layer (the first check comes a fraction of a layer after the header)
    text = " ".join(["deadline"] * 500)
    request = attention_request([text] * 32, model="minilm", view="head_mean")
    channel = grpc.insecure_channel(address)
    stub = pb_grpc.IntrospectionStub(channel)

    def still_serving() -> None:
        # one worker per device: it is free again long before the abandoned work could end
        started = time.perf_counter()
        reference = client.attention("still serving", model="gpt2", layers=[0], cache="bypass")[0]
        assert time.perf_counter() - started < 3
        assert reference.layers[0].shape == (4, len(reference.tokens), len(reference.tokens))

    with pytest.raises(grpc.RpcError) as error:
        list(stub.StreamAttention(request, timeout=0.05))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    still_serving()
    call = stub.StreamAttention(request)
    first = next(call)
    assert first.HasField("header")
    call.cancel()
    still_serving()
    channel.close()


def _png(width: int = 4, height: int = 3) -> bytes:
    """A tiny valid PNG (grey), written by hand: zlib and CRCs from the standard library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([128] * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("cache", ["use", "bypass"])
@pytest.mark.parametrize(
    "image",
    [
        pb.ImageInput(encoded=_png()),
        pb.ImageInput(pixels=pb.Tensor(shape=[3, 2, 2], dtype=pb.DTYPE_UINT8, data=bytes(12))),
    ],
    ids=["png", "pixels"],
)
def test_an_image_to_a_text_model_names_the_field_and_the_modalities_it_takes(
    client: Client, image: pb.ImageInput, cache: str
) -> None:
    """An image travels the same path as text (decode, cache key, model wrapper) up to
    the model's processor, which a text-only model does not have for images."""
    with pytest.raises(IntrospectError) as raised:
        client.attention(["some text", pb.Input(image=image)], model="minilm", cache=cache)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.field_violations == [("inputs[1]", "model 'minilm' takes text or token ids, not images")]


@pytest.mark.parametrize(
    ("image", "field"),
    [
        (pb.ImageInput(), "inputs[0].image"),
        (pb.ImageInput(encoded=b""), "inputs[0].image.encoded"),
        (pb.ImageInput(pixels=pb.Tensor(shape=[3, 2, 2], dtype=pb.DTYPE_UINT8, data=bytes(11))), "inputs[0].image.pixels.data"),
        (pb.ImageInput(pixels=pb.Tensor(shape=[2, 2], dtype=pb.DTYPE_UINT8, data=bytes(4))), "inputs[0].image.pixels.shape"),
        (pb.ImageInput(pixels=pb.Tensor(shape=[1, 1, 1], dtype=pb.DTYPE_INT32, data=bytes(4))), "inputs[0].image.pixels.dtype"),
    ],
)
def test_malformed_images_name_the_field(client: Client, image: pb.ImageInput, field: str) -> None:
    with pytest.raises(IntrospectError) as raised:
        client.attention([pb.Input(image=image)], model="minilm")
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation for violation, _ in raised.value.field_violations] == [field]


def test_models_are_described(client: Client, model_dirs: dict[str, Path]) -> None:
    import hashlib

    models = {info.name: info for info in client.list_models()}
    assert set(models) == {"minilm", "gpt2", "llama", "classifier"}
    llama = client.get_model("llama")
    assert (llama.num_layers, llama.num_heads, llama.num_key_value_heads) == (3, 4, 2)
    assert llama.kind == pb.MODEL_KIND_CAUSAL_LM and llama.max_tokens == 128
    minilm = models["minilm"]
    assert (minilm.num_layers, minilm.num_heads, minilm.max_tokens, minilm.hidden_size) == (6, 12, 512, 384)
    assert minilm.architecture == "BertModel" and minilm.dtype == "float32" and minilm.device == "cpu"
    assert models["classifier"].num_labels == 3
    assert all(list(info.modalities) == [pb.MODALITY_TEXT] for info in models.values())
    digest = hashlib.sha256()
    directory = model_dirs["gpt2"]
    for file in sorted([*directory.glob("*.safetensors"), directory / "config.json"]):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    assert models["gpt2"].fingerprint == digest.hexdigest()
    assert len({info.fingerprint for info in models.values()}) == 4


def test_fingerprint_changes_with_the_weights(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    from introspect.models import fingerprint_directory
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "gpt2"
    shutil.copytree(model_dirs["gpt2"], copy)
    assert fingerprint_directory(copy) == fingerprint_directory(model_dirs["gpt2"])
    weights_file = next(copy.glob("*.safetensors"))
    weights = load_file(weights_file)
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3
    save_file(weights, weights_file, metadata={"format": "pt"})
    assert fingerprint_directory(copy) != fingerprint_directory(model_dirs["gpt2"])


def test_health_and_reflection(address: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "introspect.v1.Introspection"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services = {service.name for response in responses for service in response.list_services_response.service}
    assert "introspect.v1.Introspection" in services and "grpc.health.v1.Health" in services
    channel.close()
