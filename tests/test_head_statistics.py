"""StreamHeadStatistics through the session server and the real client, against direct
computations: every statistic recomputed with numpy from transformers' eager attention
(`output_attentions=True`) and `output_hidden_states`, one input at a time (the server
pads them into batches); induction from the repeated sequences the header reports;
retrieval from a direct greedy loop with eager attention. On these random-weight models
the values mean nothing: only the computation is checked."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import reference_model, reference_tokenizer
from introspect_client import Client, IntrospectError

TOLERANCE = 2e-5
TEXTS = ["The cat sat on the mat, then slept.", "Hello world!", "A dog; a cat: two pets (maybe three)."]
ATTENTION = ("entropy", "first_token", "special_tokens", "delimiters", "mean_distance", "previous_token", "same_token")


def punctuation(token: str) -> bool:
    text = token.removeprefix("##").replace("Ġ", "").replace("▁", "").strip()
    return bool(text) and all(unicodedata.category(character).startswith("P") for character in text)


def direct_statistics(model_dirs: dict[str, Path], name: str, ids: list[int],
                      tokens: list[str]) -> dict[str, np.ndarray]:
    """Every statistic of one input from eager attention maps, with numpy."""
    model = reference_model(model_dirs, name)
    special_ids = set(reference_tokenizer(model_dirs, name).all_special_ids)
    with torch.no_grad():
        output = model(torch.tensor([ids]), output_attentions=True, output_hidden_states=True,
                       **({"use_cache": False} if name in ("gpt2", "llama") else {}))
    maps = np.stack([layer[0].double().numpy() for layer in output.attentions])  # [layers, heads, q, k]
    n = len(ids)
    special = np.array([token in special_ids for token in ids])
    delimiters = special | np.array([punctuation(token) for token in tokens])
    distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(maps > 0, maps * np.log(maps), 0.0).sum(-1).mean(-1)
    result = {
        "entropy": entropy,
        "first_token": maps[..., 0].mean(-1),
        "special_tokens": maps[..., special].sum(-1).mean(-1),
        "delimiters": maps[..., delimiters].sum(-1).mean(-1),
        "mean_distance": (maps * distance).sum(-1).mean(-1),
        "previous_token": np.stack([[np.mean([head[q, q - 1] for q in range(1, n)]) for head in layer]
                                    for layer in maps]),
        "same_token": np.stack([[np.mean([head[q, q] for q in range(n)]) for head in layer] for layer in maps]),
    }
    if name not in ("gpt2", "llama"):  # BERT's hidden states are its blocks' outputs (GPT-2's last one is normed)
        norms = np.stack([state[0].norm(dim=-1).numpy() for state in output.hidden_states[1:]])  # [layers, tokens]
        result["hidden_norms"] = norms
        result["hidden_norm"] = np.stack([norms[:, 0], norms[:, 1:].mean(1), norms[:, 1:].max(1)], axis=1)
    return result


@pytest.mark.parametrize("name", ["minilm", "gpt2", "llama"])
def test_statistics_over_several_inputs_equal_numpy_on_eager_attention(
    client: Client, model_dirs: dict[str, Path], name: str
) -> None:
    stats = client.head_statistics(TEXTS, model=name)
    assert sorted(item.input_index for item in stats.per_input) == [0, 1, 2]  # shortest first
    stats.per_input.sort(key=lambda item: item.input_index)
    references = [direct_statistics(model_dirs, name, item["token_ids"], item["tokens"]) for item in stats.inputs]
    layers, heads = references[0]["entropy"].shape
    assert stats.layers == list(range(layers)) and stats.heads == list(range(heads))
    assert list(stats.mean) == [*ATTENTION, "hidden_norm"]
    for statistic in ATTENTION:
        every = np.stack([reference[statistic] for reference in references])
        for item, reference in zip(stats.per_input, references):
            np.testing.assert_allclose(item.values[statistic], reference[statistic], atol=TOLERANCE, rtol=0,
                                       err_msg=statistic)
        np.testing.assert_allclose(stats.mean[statistic], every.mean(0), atol=TOLERANCE, rtol=0, err_msg=statistic)
        np.testing.assert_allclose(stats.std[statistic], every.std(0), atol=TOLERANCE, rtol=0, err_msg=statistic)
        assert stats.counts[statistic] == len(TEXTS)
    if "hidden_norm" in references[0]:
        for item, reference in zip(stats.per_input, references):
            np.testing.assert_allclose(item.hidden_norms, reference["hidden_norms"], rtol=1e-5, atol=1e-4)
        every = np.stack([reference["hidden_norm"] for reference in references])
        np.testing.assert_allclose(stats.mean["hidden_norm"], every.mean(0), rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(stats.std["hidden_norm"], every.std(0), rtol=1e-5, atol=1e-4)
    assert stats.mean["hidden_norm"].shape == (layers, 3)
    roles = stats.roles()
    assert len(roles) == layers and all(role in ATTENTION for row in roles for role in row)


def test_streamed_aggregates_grow_input_by_input(client: Client) -> None:
    messages = list(client.stream_head_statistics(TEXTS * 2, model="gpt2", statistics=["entropy"], layers=[1],
                                                  heads=[0, 3]))
    kinds = [message.WhichOneof("payload") for message in messages]
    assert kinds[0] == "header" and kinds.count("input") == 6 and kinds[-1] == "aggregate"
    done = [message.aggregate.inputs_done for message in messages if message.WhichOneof("payload") == "aggregate"]
    assert done == sorted(done) and done[-1] == 6
    final = messages[-1].aggregate.values[0]
    assert list(final.layers) == [1] and list(final.heads) == [0, 3] and final.count == 6


def test_induction_equals_the_direct_loop_on_the_reported_sequences(client: Client,
                                                                    model_dirs: dict[str, Path]) -> None:
    stats = client.head_statistics(None, model="llama", statistics=["induction"], induction_length=7,
                                   induction_samples=3, induction_seed=5)
    again = client.head_statistics(None, model="llama", statistics="induction", induction_length=7,
                                   induction_samples=3, induction_seed=5, cache="bypass")
    assert [item["token_ids"] for item in again.inputs] == [item["token_ids"] for item in stats.inputs]
    model = reference_model(model_dirs, "llama")
    scores = []
    for item in stats.inputs:
        ids = item["token_ids"]
        assert len(ids) == 14 and ids[:7] == ids[7:]
        with torch.no_grad():
            maps = model(torch.tensor([ids]), output_attentions=True, use_cache=False).attentions
        scores.append([[np.mean([float(layer[0, head, 7 + t, t + 1]) for t in range(7)]) for head in range(4)]
                       for layer in maps])
    scores = np.array(scores)
    np.testing.assert_allclose(stats.mean["induction"], scores.mean(0), atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(stats.std["induction"], scores.std(0), atol=TOLERANCE, rtol=0)
    assert stats.counts == {"induction": 3}


def greedy(model: torch.nn.Module, ids: list[int], steps: int) -> tuple[list[int], list[np.ndarray]]:
    """Greedy continuation and, per step, the last row's attention [layers, heads, keys]."""
    ids = list(ids)
    rows = []
    for _ in range(steps):
        with torch.no_grad():
            output = model(torch.tensor([ids]), output_attentions=True, use_cache=False)
        rows.append(np.stack([layer[0, :, -1].numpy() for layer in output.attentions]))
        ids.append(int(output.logits[0, -1].argmax()))
    return ids[-steps:], rows


def test_retrieval_equals_a_direct_greedy_loop(client: Client, model_dirs: dict[str, Path]) -> None:
    model = reference_model(model_dirs, "gpt2")
    start = [1000, 1001] + [2000 + 37 * index for index in range(6)]
    continuation, _ = greedy(model, start, 6)
    prompt = start + continuation  # the needle holds what the model likes to generate
    needle = (2, len(prompt) - 1)
    steps = 6
    generated, rows = greedy(model, prompt, steps)
    copies = np.zeros(rows[0].shape[:2])
    needle_tokens = set(prompt[needle[0]:needle[1]])
    for token, row in zip(generated, rows):
        if token in needle_tokens:
            top = row.argmax(-1)  # [layers, heads]
            copies += np.vectorize(lambda key: needle[0] <= key < needle[1] and prompt[key] == token)(top)
    expected = copies / (needle[1] - needle[0])
    stats = client.head_statistics([prompt], model="gpt2", statistics=["retrieval", "first_token"],
                                   retrieval_steps=steps, needle_start=needle[0], needle_end=-1)
    assert stats.per_input[0].generated_token_ids == generated and len(stats.per_input[0].generated_tokens) == steps
    assert any(token in needle_tokens for token in generated)
    np.testing.assert_allclose(stats.mean["retrieval"], expected, atol=0, rtol=1e-6)
    assert expected.max() > 0  # some head copied
    assert list(stats.per_input[0].values) == ["retrieval", "first_token"]


@pytest.mark.parametrize(
    ("model", "inputs", "options", "field", "fragment"),
    [
        ("minilm", None, {"statistics": ["induction"]}, "statistics", "needs a causal model"),
        ("minilm", TEXTS, {"statistics": ["retrieval"]}, "statistics", "needs a causal model"),
        ("classifier", TEXTS, {"statistics": ["entropy", "induction"]}, "statistics", "needs a causal model"),
        ("gpt2", None, {}, "inputs", "at least one input"),
        ("gpt2", TEXTS, {"statistics": ["induction"]}, "inputs", "send no inputs"),
        ("gpt2", TEXTS, {"layers": [3]}, "layers", "out of range"),
        ("gpt2", TEXTS, {"heads": [4]}, "heads", "out of range"),
        ("gpt2", None, {"statistics": ["induction"], "induction_length": 1}, "induction_length", "must be in"),
        ("gpt2", None, {"statistics": ["induction"], "induction_samples": 65}, "induction_samples", "must be in"),
        ("gpt2", TEXTS, {"statistics": ["retrieval"], "retrieval_steps": 65}, "retrieval_steps", "must be in"),
        ("gpt2", TEXTS, {"statistics": ["retrieval"], "needle_start": 99}, "needle_start", "outside a prompt"),
        ("gpt2", TEXTS, {"statistics": ["retrieval"], "needle_start": 2, "needle_end": 1}, "needle_end", "must end"),
    ],
)
def test_invalid_requests_name_the_field(client: Client, model: str, inputs: object, options: dict[str, object],
                                         field: str, fragment: str) -> None:
    with pytest.raises(IntrospectError) as raised:
        client.head_statistics(inputs, model=model, **options)  # type: ignore[arg-type]
    assert raised.value.code.name == "INVALID_ARGUMENT"
    assert [violation for violation, _ in raised.value.field_violations] == [field]
    assert fragment in raised.value.message


def test_more_inputs_than_the_server_takes_is_refused_naming_inputs(client: Client) -> None:
    with pytest.raises(IntrospectError) as raised:
        client.head_statistics(["a"] * 65, model="gpt2")
    assert raised.value.code.name == "RESOURCE_EXHAUSTED"
    assert [violation for violation, _ in raised.value.field_violations] == ["inputs"]
    assert "--max-inputs" in raised.value.message


def test_cli_heads_json_equals_the_client_and_png_draws_every_statistic(
    client: Client, address: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import json

    from introspect_client.cli import main

    expected = client.head_statistics(TEXTS[:2], model="gpt2", statistics=["previous_token", "first_token"])
    arguments = ["heads", "--server", address, "--model", "gpt2", "--text", TEXTS[0], "--text", TEXTS[1],
                 "--statistic", "previous_token", "--statistic", "first_token"]
    assert main([*arguments, "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["mean"]["previous_token"] == expected.mean["previous_token"].tolist()
    assert document["roles"] == expected.roles() and document["counts"] == {"previous_token": 2, "first_token": 2}
    png = tmp_path / "heads.png"
    assert main([*arguments, "--png", str(png)]) == 0
    assert png.read_bytes().startswith(b"\x89PNG") and f"wrote {png}" in capsys.readouterr().out
    assert main(arguments) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[0] == "layer" and len(table) == 2 + len(expected.layers)
    assert set(" ".join(table[2:]).split()) <= {"prev", "sink", *map(str, expected.layers)}


def test_image_statistics_measure_distance_in_pixels_and_count_cls_as_special(vision_client,  # type: ignore[no-untyped-def]
                                                                             vision_dirs: dict[str, Path]) -> None:
    import vision
    from conftest import reference_pixel_values, reference_vision_model
    from introspect_client.image_inputs import make_image_input

    image = vision.draw_image(5, size=(60, 40))  # a 4 x 6 patch grid of 8 pixels after [CLS]
    stats = vision_client.head_statistics([make_image_input(image)], model="vit-classifier",
                                          statistics=["mean_distance", "special_tokens", "previous_token"])
    with torch.no_grad():
        pixels = reference_pixel_values(vision_dirs, "vit-classifier", image)
        model = reference_vision_model(vision_dirs, "vit-classifier")
        maps = model(pixel_values=pixels, output_attentions=True).attentions
    maps = np.stack([layer[0].double().numpy() for layer in maps])  # [layers, heads, 25, 25]
    centres = np.array([((r + 0.5) * 8, (c + 0.5) * 8) for r in range(4) for c in range(6)])
    distance = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    expected = (maps[:, :, 1:, 1:] * distance).sum(-1).mean(-1)
    np.testing.assert_allclose(stats.mean["mean_distance"], expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(stats.mean["special_tokens"], maps[..., 0].mean(-1), atol=TOLERANCE, rtol=0)
    previous = np.diagonal(maps, offset=-1, axis1=2, axis2=3).mean(-1)
    np.testing.assert_allclose(stats.mean["previous_token"], previous, atol=TOLERANCE, rtol=0)


async def test_the_async_client_gives_the_same_statistics(client: Client, address: str) -> None:
    from introspect_client import AsyncClient

    expected = client.head_statistics(TEXTS[1:], model="gpt2", statistics=["same_token"], heads=[2])
    async with AsyncClient(address) as async_client:
        result = await async_client.head_statistics(TEXTS[1:], model="gpt2", statistics=["same_token"], heads=[2])
        kinds = [message.WhichOneof("payload") async for message in
                 async_client.stream_head_statistics(TEXTS[1:], model="gpt2", statistics=["same_token"], heads=[2])]
    np.testing.assert_array_equal(result.mean["same_token"], expected.mean["same_token"])
    assert result.heads == [2] and kinds[0] == "header" and kinds[-1] == "aggregate"


def test_the_readme_needle_example_runs(client: Client) -> None:
    needle = client.head_statistics(["... The secret word is kumquat. ... The secret word is"], model="gpt2",
                                    statistics=["retrieval"], retrieval_steps=4, needle_start=1, needle_end=-5)
    assert len(needle.per_input[0].generated_tokens) == 4 and needle.mean["retrieval"].shape == (3, 4)


def test_roles_compare_disjoint_shares_of_attention() -> None:
    from introspect_client import HeadStatisticsResult

    # nested: delimiters >= special tokens >= first token; head 0 a sink, head 1 on [SEP], head 2 on punctuation
    mean = {"first_token": np.array([[0.6, 0.1, 0.1]]), "special_tokens": np.array([[0.7, 0.5, 0.15]]),
            "delimiters": np.array([[0.8, 0.6, 0.55]]), "previous_token": np.array([[0.05, 0.2, 0.3]])}
    result = HeadStatisticsResult("m", "", False, [], [0], [0, 1, 2], mean, mean, {}, [])
    assert result.roles() == [["first_token", "special_tokens", "delimiters"]]
