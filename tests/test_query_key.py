"""StreamQueryKeyEmbeddings through the session server and the real client, against an
independent reference: the post-rotary queries and keys recomputed from the model's own
modules in plain transformers (the q_proj / k_proj outputs, hooked, with transformers'
`apply_rotary_pos_emb` and the model's rotary embedding applied here for llama; BERT's
query / key linear outputs), each input run alone (no padding), AttentionViz's
normalisation in numpy, and scikit-learn's PCA (compared up to the sign of each axis)."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from conftest import reference_model
from introspect_client import Client, IntrospectError
from introspect_contract import pb, pb_grpc
from sklearn.decomposition import PCA

LLAMA_INPUTS = [[101, 1996, 3007, 1997, 2605, 2003, 3000, 1012, 102], [101, 7592, 2088, 102]]
BERT_INPUTS = ["the cat sat on the mat", "hello world"]
TOLERANCE = 2e-4


def llama_qk(model_dirs: dict[str, Path], ids: list[int], layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Post-rotary queries [heads, T, d] and keys [kv_heads, T, d] of one input at `layer`,
    from the q_proj / k_proj outputs and transformers' rotary functions."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = reference_model(model_dirs, "llama")
    attention = model.model.layers[layer].self_attn
    captured: dict[str, torch.Tensor] = {}
    handles = [attention.q_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("q", out)),
               attention.k_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("k", out)),
               attention.register_forward_pre_hook(lambda m, a, kw: captured.__setitem__("x", kw["hidden_states"]),
                                                   with_kwargs=True)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]), use_cache=False)
            positions = torch.arange(len(ids))[None]
            cos, sin = model.model.rotary_emb(captured["x"], positions)
            head_dim = model.config.head_dim
            q = captured["q"].view(1, len(ids), -1, head_dim).transpose(1, 2)
            k = captured["k"].view(1, len(ids), -1, head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
    finally:
        for handle in handles:
            handle.remove()
    return q[0].double().numpy(), k[0].double().numpy()


def bert_qk(model_dirs: dict[str, Path], text: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """BERT's queries and keys [heads, T, d] of one input at `layer` (the linear outputs)."""
    from conftest import reference_inputs

    model = reference_model(model_dirs, "classifier")
    attention = model.bert.encoder.layer[layer].attention.self
    captured: dict[str, torch.Tensor] = {}
    handles = [attention.query.register_forward_hook(lambda m, a, out: captured.__setitem__("q", out)),
               attention.key.register_forward_hook(lambda m, a, out: captured.__setitem__("k", out))]
    try:
        with torch.no_grad():
            model(**reference_inputs(model_dirs, "classifier", text))
    finally:
        for handle in handles:
            handle.remove()
    heads = model.config.num_attention_heads

    def split(values: torch.Tensor) -> np.ndarray:  # [1, T, heads * d] -> [heads, T, d]
        return values[0].view(values.shape[1], heads, -1).transpose(0, 1).double().numpy()

    return split(captured["q"]), split(captured["k"])


def normalised(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """AttentionViz's normalisation in numpy: keys translated onto the queries' mean, then
    queries x c and keys / c with c = sqrt(mean |k| / mean |q|); [2T, d], queries first."""
    keys = keys - keys.mean(axis=0) + queries.mean(axis=0)
    c = np.sqrt(np.linalg.norm(keys, axis=1).mean() / np.linalg.norm(queries, axis=1).mean())
    return np.concatenate([queries * c, keys / c])


def assert_pca_matches(coordinates: np.ndarray, vectors: np.ndarray, ratios: list[float]) -> None:
    """The coordinates equal scikit-learn's PCA of `vectors`, each axis up to its sign."""
    pca = PCA(n_components=2, svd_solver="full")
    expected = pca.fit_transform(vectors)
    for axis in range(2):
        sign = np.sign(expected[:, axis] @ coordinates[:, axis]) or 1.0
        np.testing.assert_allclose(coordinates[:, axis], sign * expected[:, axis], atol=TOLERANCE, rtol=1e-4)
    np.testing.assert_allclose(ratios, pca.explained_variance_ratio_, atol=1e-5)


def test_llama_grouped_query_rotary_queries_and_keys(client: Client, model_dirs: dict[str, Path]) -> None:
    result = client.query_key_embeddings(LLAMA_INPUTS, model="llama", layers=[2, 0], heads=[3, 0],
                                         include_vectors=True)
    lengths = [len(ids) for ids in LLAMA_INPUTS]
    assert result.num_tokens == sum(lengths)
    assert result.input_indices == [0] * lengths[0] + [1] * lengths[1]
    assert result.positions == list(range(lengths[0])) + list(range(lengths[1]))
    assert result.tokens == result.inputs[0]["tokens"] + result.inputs[1]["tokens"]
    assert result.labels()[result.num_tokens] == (0, 0, result.tokens[0], "key")
    assert [(p.layer, p.head, p.key_head) for p in result.projections] == [(0, 3, 1), (0, 0, 0), (2, 3, 1), (2, 0, 0)]
    for projection in result.projections:
        per_input = [llama_qk(model_dirs, ids, projection.layer) for ids in LLAMA_INPUTS]
        queries = np.concatenate([q[projection.head] for q, _ in per_input])
        keys = np.concatenate([k[projection.head // 2] for _, k in per_input])  # 4 query heads, 2 kv heads
        expected = normalised(queries, keys)
        assert projection.vectors is not None and projection.vectors.shape == expected.shape
        np.testing.assert_allclose(projection.vectors, expected, atol=TOLERANCE, rtol=1e-4)
        np.testing.assert_allclose(projection.query_mean_norm, np.linalg.norm(queries, axis=1).mean(), rtol=1e-4)
        # after the scaling both have one mean norm
        norms = np.linalg.norm(projection.vectors, axis=1)
        np.testing.assert_allclose(norms[: result.num_tokens].mean(), norms[result.num_tokens:].mean(), rtol=1e-4)
        # neither step changes a softmax row: per query, scores shift by one constant
        count = result.num_tokens
        shift = projection.vectors[:count].astype(np.float64) @ projection.vectors[count:].T - queries @ keys.T
        np.testing.assert_allclose(shift - shift[:, :1], 0.0, atol=1e-3)
        assert projection.projection == "pca" and projection.coordinates.shape == (2 * result.num_tokens, 2)
        assert_pca_matches(projection.coordinates, expected, projection.explained_variance_ratio)


def test_bert_every_layer_and_head(client: Client, model_dirs: dict[str, Path]) -> None:
    result = client.query_key_embeddings(BERT_INPUTS, model="classifier")
    assert [(p.layer, p.head) for p in result.projections] == [(layer, head) for layer in range(2) for head in range(4)]
    assert all(p.vectors is None and p.key_head == p.head for p in result.projections)
    for projection in result.projections:
        per_input = [bert_qk(model_dirs, text, projection.layer) for text in BERT_INPUTS]
        queries = np.concatenate([q[projection.head] for q, _ in per_input])
        keys = np.concatenate([k[projection.head] for _, k in per_input])
        assert_pca_matches(projection.coordinates, normalised(queries, keys), projection.explained_variance_ratio)


def test_a_cached_replay_equals_the_computed_stream(client: Client) -> None:
    options = {"model": "llama", "layers": 1, "heads": 2, "include_vectors": True}
    computed = client.query_key_embeddings(BERT_INPUTS, cache="refresh", **options)  # type: ignore[arg-type]
    replayed = client.query_key_embeddings(BERT_INPUTS, **options)  # type: ignore[arg-type]
    assert not computed.cached and replayed.cached
    assert replayed.tokens == computed.tokens and len(replayed.projections) == 1
    np.testing.assert_array_equal(replayed.projections[0].coordinates, computed.projections[0].coordinates)
    np.testing.assert_array_equal(replayed.projections[0].vectors, computed.projections[0].vectors)  # type: ignore[arg-type]


def test_tsne_projection(client: Client) -> None:
    result = client.query_key_embeddings(BERT_INPUTS, model="classifier", layers=1, heads=2, projection="tsne")
    (projection,) = result.projections
    assert projection.projection == "tsne" and projection.explained_variance_ratio == []
    assert projection.coordinates.shape == (2 * result.num_tokens, 2) and np.isfinite(projection.coordinates).all()


def test_vectors_split_under_a_small_message_limit(small_message_server) -> None:  # type: ignore[no-untyped-def]
    from introspect_client import Client as Connected

    text = " ".join(["word"] * 250)  # ~252 tokens: 504 points x 32 dims x 4 bytes > one 64 KiB message
    with Connected(small_message_server.address) as small:
        messages = list(small.stream_query_key_embeddings(text, layers=0, heads=1, include_vectors=True))
        result = small.query_key_embeddings(text, layers=0, heads=1, include_vectors=True)
    assert sum(message.WhichOneof("payload") == "vectors" for message in messages) > 1
    (projection,) = result.projections
    assert projection.vectors is not None and projection.vectors.shape == (2 * result.num_tokens, 32)
    assert_pca_matches(projection.coordinates, projection.vectors.astype(np.float64),
                       projection.explained_variance_ratio)


def refusal(address: str, request: pb.StreamQueryKeyEmbeddingsRequest) -> tuple[grpc.StatusCode, str]:
    """(status code, the field violation's field) of a call that must fail."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as raised:
        list(pb_grpc.IntrospectionStub(channel).StreamQueryKeyEmbeddings(request))
    status = rpc_status.from_call(raised.value)
    assert status is not None and status.details
    violations = error_details_pb2.BadRequest()
    status.details[0].Unpack(violations)
    return raised.value.code(), violations.field_violations[0].field


def test_empty_and_too_many_inputs_name_the_field(address: str) -> None:
    assert refusal(address, pb.StreamQueryKeyEmbeddingsRequest(model="llama")) == (
        grpc.StatusCode.INVALID_ARGUMENT, "inputs")
    many = [pb.Input(token_ids=pb.TokenIds(ids=[101, 102]))] * 33
    assert refusal(address, pb.StreamQueryKeyEmbeddingsRequest(model="llama", inputs=many)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "inputs")


@pytest.mark.parametrize(
    ("options", "field", "fragment"),
    [
        ({"layers": [3]}, "layers", "out of range"),
        ({"heads": [4]}, "heads", "out of range"),
        ({"heads": [-1]}, "heads", "out of range"),
    ],
)
def test_invalid_requests_name_the_field(client: Client, options: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(IntrospectError) as raised:
        client.query_key_embeddings(LLAMA_INPUTS, model="llama", **options)  # type: ignore[arg-type]
    assert raised.value.code.name == "INVALID_ARGUMENT"
    assert [violation for violation, _ in raised.value.field_violations] == [field]
    assert fragment in str(raised.value)


def test_missing_optional_projection_package_is_refused(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from introspect.methods import query_key

    real = importlib.util.find_spec
    monkeypatch.setattr(query_key.importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    with pytest.raises(IntrospectError) as raised:
        client.query_key_embeddings(BERT_INPUTS, model="classifier", projection="umap")
    assert raised.value.code.name == "INVALID_ARGUMENT"
    assert [violation for violation, _ in raised.value.field_violations] == ["projection"]
    assert "umap-learn" in str(raised.value)


def test_too_many_tokens_and_vectors_name_the_field(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from introspect.methods import query_key

    monkeypatch.setattr(query_key, "MAX_TOKENS", 10)
    with pytest.raises(IntrospectError) as raised:
        client.query_key_embeddings(LLAMA_INPUTS, model="llama", cache="bypass")
    assert [violation for violation, _ in raised.value.field_violations] == ["inputs"]
    monkeypatch.setattr(query_key, "MAX_TOKENS", 2048)
    monkeypatch.setattr(query_key, "MAX_VECTOR_BYTES", 1000)
    with pytest.raises(IntrospectError) as raised:
        client.query_key_embeddings(LLAMA_INPUTS, model="llama", include_vectors=True, cache="bypass")
    assert [violation for violation, _ in raised.value.field_violations] == ["include_vectors"]


def test_cli_json_png_and_html_view(address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from browser import Browser
    from introspect_client.cli import main

    png, page = tmp_path / "qk.png", tmp_path / "qk.html"
    arguments = ["qk", "--server", address, "--model", "llama", "--text", "the cat sat", "--text", "a dog",
                 "--layer", "1", "--head", "0", "--head", "3"]
    assert main([*arguments, "--json", "--png", str(png), "--html", str(page)]) == 0
    document = json.loads(capsys.readouterr().out)
    count = len(document["tokens"])
    assert [(item["layer"], item["head"], item["key_head"]) for item in document["projections"]] == [(1, 0, 0), (1, 3, 1)]
    assert np.asarray(document["projections"][0]["coordinates"]).shape == (2 * count, 2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(arguments) == 0
    assert "layer 1 head 3 (key head 1): pca" in capsys.readouterr().out

    with Browser.start() as browser:
        browser.open(page)
        assert browser.evaluate("document.body.dataset.ready") == "true", browser.errors
        assert browser.evaluate("document.querySelectorAll('svg.scatter-plot circle').length") == count
        assert browser.evaluate("document.querySelectorAll('svg.scatter-plot path[data-kind=\"key\"]').length") == count
        last = 2 * count - 1  # the last token's key ([CLS] at position 0 has one point per input, on top of each other)
        browser.hover(f"svg.scatter-plot path[data-index='{last}']")
        shown = browser.evaluate("document.querySelector('.scatter-info').textContent")
        position = document["positions"][-1]
        assert shown.startswith(f"key \u201c{document['tokens'][-1]}\u201d input 1 position {position}"), shown
        browser.evaluate("(() => { const s = document.querySelector('.panel-select'); s.value = '1';"
                         " s.dispatchEvent(new Event('change')); })()")
        assert browser.evaluate("document.querySelectorAll('svg.scatter-plot circle').length") == count
        assert browser.errors == []


async def test_async_client_equals_the_sync_client(client: Client, address: str) -> None:
    from introspect_client import AsyncClient

    expected = client.query_key_embeddings(BERT_INPUTS, model="classifier", layers=0, heads=1)
    async with AsyncClient(address) as async_client:
        result = await async_client.query_key_embeddings(BERT_INPUTS, model="classifier", layers=0, heads=1)
        kinds = [message.WhichOneof("payload") async for message in
                 async_client.stream_query_key_embeddings(BERT_INPUTS, model="classifier", layers=0, heads=1)]
    assert kinds == ["header", "points", "projection"]
    assert result.labels() == expected.labels()
    np.testing.assert_array_equal(result.projections[0].coordinates, expected.projections[0].coordinates)


@pytest.mark.parametrize("model_type", ["glm", "smollm3"])
def test_the_points_give_eager_attention_on_other_position_schemes(tmp_path: Path, model_type: str) -> None:
    """Interleaved partial rotary (glm) and rotary skipped on some layers (smollm3): the
    normalised vectors, which leave every softmax row as it was, give transformers' eager
    attention probabilities: softmax(q k^T / sqrt(head_dim)) under the causal mask."""
    from architectures import CASES, build_tiny_model, minilm_tokenizer
    from introspect.config import ModelSpec
    from introspect.methods import method_for
    from introspect.methods.query_key import QueryKeyProjectionResult, QueryKeyQuery
    from introspect.models import load_model
    from introspect.requests import InputSpec
    from introspect.results import QueryKeyVectorsResult
    from transformers import AutoModelForCausalLM

    (case,) = [case for case in CASES if case.model_type == model_type]
    path = build_tiny_model(case, tmp_path, minilm_tokenizer())
    model = load_model(ModelSpec(model_type, path), torch.device("cpu"), "float32")
    emitted: list[object] = []

    class Sink:
        def emit(self, item: object) -> None:
            emitted.append(item)

        def check(self) -> None:
            pass

    ids = LLAMA_INPUTS[0]
    query = QueryKeyQuery(model=model_type, inputs=(InputSpec(token_ids=tuple(ids)),), include_vectors=True)
    method = method_for(query)
    method.run(model, query, method.prepare(model.description, query), Sink())
    projections = [item for item in emitted if isinstance(item, QueryKeyProjectionResult)]
    vectors = [item for item in emitted if isinstance(item, QueryKeyVectorsResult)]
    description = model.description
    assert len(projections) == len(vectors) == description.num_layers * description.num_heads
    reference = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()
    with torch.no_grad():
        attentions = reference(torch.tensor([ids]), output_attentions=True, use_cache=False).attentions
    count = len(ids)
    causal = np.tril(np.ones((count, count), dtype=bool))
    for item in vectors:
        points = item.vectors.values.astype(np.float64)
        scores = np.where(causal, points[:count] @ points[count:].T / np.sqrt(description.head_dim), -np.inf)
        probabilities = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probabilities, attentions[item.layer][0, item.head].double().numpy(), atol=1e-4)


def test_the_assembler_refuses_vectors_with_a_gap_or_overlap() -> None:
    """Vector chunks must cover the points 0..2T once each, in order of point_start."""
    from introspect_client.query_key import QueryKeyAssembler
    from introspect_contract.tensors import encode_tensor

    def stream(spans: list[tuple[int, int]]) -> list[pb.StreamQueryKeyEmbeddingsResponse]:
        coordinates = np.zeros((6, 2), dtype=np.float32)
        messages = [pb.StreamQueryKeyEmbeddingsResponse(header=pb.StreamHeader(model="m")),
                    pb.StreamQueryKeyEmbeddingsResponse(points=pb.QueryKeyPoints(input_indices=[0, 0, 0],
                                                                                  positions=[0, 1, 2],
                                                                                  tokens=["a", "b", "c"])),
                    pb.StreamQueryKeyEmbeddingsResponse(projection=pb.QueryKeyProjection(
                        layer=0, head=0, coordinates=encode_tensor(coordinates)))]
        for start, end in spans:
            rows = np.full((end - start, 4), start, dtype=np.float32)
            messages.append(pb.StreamQueryKeyEmbeddingsResponse(vectors=pb.QueryKeyVectors(
                layer=0, head=0, point_start=start, point_end=end, vectors=encode_tensor(rows))))
        return messages

    def assembled(spans: list[tuple[int, int]]) -> object:
        assembler = QueryKeyAssembler()
        for message in stream(spans):
            assembler.add(message)
        return assembler.result()

    whole = assembled([(3, 6), (0, 3)])  # any arrival order
    np.testing.assert_array_equal(whole.projections[0].vectors[:, 0], [0, 0, 0, 3, 3, 3])  # type: ignore[attr-defined]
    for broken in ([(0, 2), (3, 6)], [(0, 4), (3, 6)], [(1, 6)], [(0, 3)]):
        with pytest.raises(ValueError, match="vectors of layer 0 head 0"):
            assembled(broken)
