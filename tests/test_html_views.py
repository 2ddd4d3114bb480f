"""The HTML views (introspect_client.html, `--html FILE`) in a real headless Chromium.

One server on loopback (the packaged MiniLM, the tiny GPT-2, the tiny ViT classifier),
results through the real client, pages rendered and driven over the DevTools protocol
(tests/browser.py): every page loads without console errors, the views show the values
of the result (attention against transformers' eager attention on the same weights, the
other views against the client's arrays), hovering changes what is shown, and a
screenshot is not blank. Chromium missing is a failure, not a skip.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import Browser
from conftest import InProcessServer
from introspect_client import AttentionResult, Client, InputAttention, targets
from introspect_client.cli import main
from introspect_client.html import to_html, write_html

TEXT = 'The cat sat on the mat <b>"&"</b> today.'
CLEAN, CORRUPTED = [5, 6, 7, 8, 9], [5, 6, 17, 8, 9]
GPT2_LAYERS, GPT2_HEADS = 3, 4
VISION_MODEL = "vit-classifier"
ATTENTION_TOLERANCE = 3e-4  # 4 decimals in the page, and the server's kernels against eager attention


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import vision

    return vision.build_vision_model(vision.VISION_CASES_BY_NAME[VISION_MODEL], tmp_path_factory.mktemp("html-vit"))


@pytest.fixture(scope="module")
def html_server(model_dirs: dict[str, Path], vit_dir: Path) -> Iterator[InProcessServer]:
    running = InProcessServer(f"--model=minilm={model_dirs['minilm']}", f"--model=gpt2={model_dirs['gpt2']}",
                              f"--model={VISION_MODEL}={vit_dir}")
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def html_client(html_server: InProcessServer) -> Iterator[Client]:
    with Client(html_server.address, timeout=120) as connected:
        yield connected


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    try:
        started = Browser.start()
    except RuntimeError as error:
        pytest.fail(f"the HTML view tests need a headless Chromium: {error}")
    with started:
        yield started


def show(browser: Browser, page: str | Path, tmp_path: Path, name: str = "page.html") -> Path:
    """Writes `page` (HTML text) or takes a written file, opens it and checks that it
    rendered without errors."""
    path = Path(page) if isinstance(page, Path) else tmp_path / name
    if not isinstance(page, Path):
        path.write_text(page, encoding="utf-8")
    browser.errors.clear()
    browser.open(path)
    assert browser.evaluate("document.body.dataset.ready") == "true", browser.errors
    assert browser.errors == []
    return path


def values(browser: Browser, selector: str) -> list[float | None]:
    """data-value of every element matching `selector` (None where absent or empty)."""
    found = browser.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})].map((n) => n.dataset.value ?? null)")
    return [None if value in (None, "") else float(value) for value in found]


def texts(browser: Browser, selector: str) -> list[str]:
    return browser.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})].map((n) => n.textContent)")


def info(browser: Browser, selector: str) -> dict[str, str]:
    return browser.evaluate(f"Object.assign({{text: document.querySelector({json.dumps(selector)}).textContent}},"
                            f" document.querySelector({json.dumps(selector)}).dataset)")


def distinct_colours(png: bytes) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 20) or [])


def eager_attention(model_dirs: dict[str, Path], text: str) -> list[np.ndarray]:
    """transformers' eager attention of MiniLM: per layer [heads, query, keys]."""
    import torch
    from conftest import reference_inputs, reference_model

    with torch.no_grad():
        output = reference_model(model_dirs, "minilm")(**reference_inputs(model_dirs, "minilm", text),
                                                         output_attentions=True)
    return [layer[0].numpy() for layer in output.attentions]


# ----------------------------------------------------------------------------------------


def test_attention_head_view_and_model_view(html_client: Client, browser: Browser, model_dirs: dict[str, Path],
                                            tmp_path: Path) -> None:
    result = html_client.attention(TEXT, model="minilm", layers=[4, 5], view="heads")
    item = result[0]
    eager = eager_attention(model_dirs, TEXT)
    assert eager[5].shape == (12, len(item.tokens), len(item.tokens))
    show(browser, to_html(result), tmp_path)

    assert texts(browser, ".head-view .hv-right .tok") == item.tokens
    assert texts(browser, ".head-view .hv-left .tok") == item.tokens
    assert texts(browser, ".layer-select option") == ["layer 4", "layer 5"]
    assert values(browser, ".hv-right .tok") == [None] * len(item.tokens)  # nothing before a hover

    # hovering a query token: the keys show its attention row, the mean over the checked heads
    browser.hover(".hv-left .tok[data-index='3']")
    np.testing.assert_allclose(values(browser, ".hv-right .tok"), eager[4][:, 3, :].mean(axis=0),
                               atol=ATTENTION_TOLERANCE)
    assert info(browser, ".head-info")["side"] == "query" and item.tokens[3] in info(browser, ".head-info")["text"]

    # one head: its row, one line per weight of 2% or more of the row's largest
    browser.click(".no-heads")
    browser.click(".head-box[data-head='7']")
    browser.hover(".hv-left .tok[data-index='3']")
    row = eager[4][7, 3, :]
    np.testing.assert_allclose(values(browser, ".hv-right .tok"), row, atol=ATTENTION_TOLERANCE)
    drawn = browser.evaluate("document.querySelectorAll('.head-view svg line').length")
    cut = 0.02 * row.max()  # within the page's rounding of the threshold, either way
    assert int((row >= cut + ATTENTION_TOLERANCE).sum()) <= drawn <= int((row >= cut - ATTENTION_TOLERANCE).sum())
    assert drawn > 0

    # another layer, another token; then a key token: its column over the queries
    browser.evaluate("(() => { const s = document.querySelector('.layer-select'); s.value = '1';"
                     " s.dispatchEvent(new Event('change')); })()")
    browser.hover(".hv-left .tok[data-index='5']")
    np.testing.assert_allclose(values(browser, ".hv-right .tok"), eager[5][7, 5, :], atol=ATTENTION_TOLERANCE)
    browser.hover(".hv-right .tok[data-index='2']")
    np.testing.assert_allclose(values(browser, ".hv-left .tok"), eager[5][7, :, 2], atol=ATTENTION_TOLERANCE)
    assert values(browser, ".hv-right .tok") == [None] * len(item.tokens)

    # model view: a map per (layer, head); hovering a cell shows its value
    assert browser.evaluate("document.querySelectorAll('.model-view .mv-cell').length") == 2 * 12
    count = len(item.tokens)
    for layer, head, query, key in ((5, 2, 4, 6), (4, 11, 0, count - 1)):
        browser.hover(f".mv-cell[data-layer='{layer}'][data-head='{head}'] canvas",
                      (key + 0.5) / count, (query + 0.5) / count)
        shown = info(browser, ".model-info")
        assert (shown["layer"], shown["head"], shown["query"], shown["key"]) == tuple(map(str, (layer, head, query, key)))
        assert float(shown["value"]) == pytest.approx(float(eager[layer][head, query, key]), abs=ATTENTION_TOLERANCE)

    # clicking a map opens it in the head view
    browser.click(".mv-cell[data-layer='4'][data-head='9']")
    assert browser.evaluate("document.querySelector('.layer-select').value") == "0"
    checked = browser.evaluate("[...document.querySelectorAll('.head-box')].map((b) => b.checked)")
    assert checked == [head == 9 for head in range(12)]
    browser.evaluate("window.scrollTo(0, 0)")
    assert distinct_colours(browser.screenshot()) > 100
    assert browser.errors == []


def test_saliency_tokens_show_their_scores(html_client: Client, browser: Browser, tmp_path: Path) -> None:
    result = html_client.saliency(TEXT, model="minilm", method="gradient_x_input", target=targets.embedding_norm())
    show(browser, to_html(result), tmp_path)
    assert texts(browser, ".tokens .tok") == result.tokens
    tolerance = 1e-3 * float(np.abs(result.scores).max())
    np.testing.assert_allclose(values(browser, ".tokens .tok"), result.scores, atol=tolerance)
    for index in (2, len(result.tokens) - 2):
        browser.hover(f".tokens .tok[data-index='{index}']")
        shown = info(browser, ".token-info")
        assert shown["index"] == str(index) and result.tokens[index] in shown["text"]
        assert float(shown["value"]) == pytest.approx(float(result.scores[index]), abs=tolerance)
    assert distinct_colours(browser.screenshot()) > 20


def grid_values(browser: Browser, name: str) -> np.ndarray:
    cells = browser.evaluate(
        f"[...document.querySelectorAll('section[data-name={json.dumps(name)}] tbody tr')]"
        ".map((tr) => [...tr.querySelectorAll('td')].map((td) => td.dataset.value))")
    return np.array([[np.nan if value == "" else float(value) for value in row] for row in cells])


def check_grid(browser: Browser, name: str, expected: np.ndarray, hover: tuple[int, int],
               whole: np.ndarray | None = None) -> None:
    """The grid's cells hold `expected` (NaN as empty; values to 4 significant digits of
    the largest magnitude of `whole`, the array `expected` is a slice of), and hovering a
    cell shows its value."""
    tolerance = 1e-3 * float(np.nanmax(np.abs(expected if whole is None else whole)))
    np.testing.assert_allclose(grid_values(browser, name), expected, atol=tolerance)
    row, column = hover
    browser.hover(f"section[data-name={json.dumps(name)}] td[data-row='{row}'][data-column='{column}']")
    shown = info(browser, f"section[data-name={json.dumps(name)}] .grid-info")
    assert (shown["row"], shown["column"]) == (str(row), str(column))
    assert float(shown["value"]) == pytest.approx(float(expected[row, column]), abs=tolerance)


def test_ablation_and_importance_grids(html_client: Client, browser: Browser, tmp_path: Path) -> None:
    per_head = html_client.ablate(CLEAN, model="gpt2", target=targets.next_token(), mode="per_head")
    assert per_head.target_delta is not None and per_head.output_change is not None
    show(browser, to_html(per_head), tmp_path)
    assert browser.evaluate("document.querySelectorAll('section[data-name=\"target_delta\"] td').length") \
        == GPT2_LAYERS * GPT2_HEADS
    check_grid(browser, "target_delta", per_head.target_delta, (2, 1))
    check_grid(browser, "output_change", per_head.output_change, (0, 3))

    importance = html_client.ablate(CLEAN, model="gpt2", target=targets.next_token(), mode="importance",
                                    heads=[(0, 1), (2, 3), (1, 0)])
    assert importance.importance is not None and np.isnan(importance.importance).sum() == 9
    show(browser, to_html(importance), tmp_path)
    check_grid(browser, "importance", importance.importance, (2, 3))
    assert browser.evaluate("document.querySelectorAll('section[data-name=\"importance\"] td.missing').length") == 9


def test_patching_and_logit_lens_grids(html_client: Client, browser: Browser, tmp_path: Path) -> None:
    result = html_client.patch(CLEAN, CORRUPTED, model="gpt2", target=targets.next_token(),
                               points=["resid_pre", "head_position"])
    pair = result[0]
    show(browser, to_html(result), tmp_path)
    resid = pair.maps[("activation", "resid_pre")]
    assert resid.normalized is not None
    check_grid(browser, "0:activation:resid_pre", resid.normalized, (1, 2))
    assert texts(browser, "section[data-name='0:activation:resid_pre'] thead th")[1:] == \
        [f"{position} {token}" for position, token in enumerate(pair.clean.tokens)]  # type: ignore[union-attr]
    heads = pair.maps[("activation", "head_position")].normalized
    assert heads is not None and heads.shape == (GPT2_LAYERS, GPT2_HEADS, len(CLEAN))
    check_grid(browser, "0:activation:head_position", heads[:, :, 0], (1, 1), heads)
    browser.evaluate("(() => { const s = document.querySelector(\"section[data-name='0:activation:head_position']"
                     " .slice-select\"); s.value = '2'; s.dispatchEvent(new Event('change')); })()")
    check_grid(browser, "0:activation:head_position", heads[:, :, 2], (2, 3), heads)

    lens = html_client.logit_lens(CLEAN, model="gpt2", top_k=3)
    show(browser, to_html(lens), tmp_path)
    check_grid(browser, "lens", lens.chosen_probabilities, (1, 4))
    cells = browser.evaluate("[...document.querySelectorAll('section[data-name=\"lens\"] tbody tr')]"
                             ".map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent))")
    assert cells == [[tokens[0] for tokens in row] for row in lens.top_tokens]
    assert lens.top_tokens[1][4][1] in info(browser, "section[data-name='lens'] .grid-info")["text"]
    assert browser.errors == []


def test_vision_overlays(html_client: Client, browser: Browser, tmp_path: Path) -> None:
    import vision

    image = vision.draw_image(5, size=(60, 40))
    cam = html_client.saliency(image=image, model=VISION_MODEL, method="grad_cam", target=targets.class_score(0),
                               also=["layer_cam"])
    assert cam.image is not None and (cam.image.grid_rows, cam.image.grid_columns) == (4, 6)
    show(browser, to_html(cam, image=image), tmp_path)
    assert browser.evaluate("[...document.querySelectorAll('.panel')].map((p) => p.dataset.title)") == \
        ["grad_cam", "layer_cam"]
    assert browser.evaluate("document.querySelector('.panel img').src.startsWith('data:image/png;base64,')")
    for panel, name in enumerate(("grad_cam", "layer_cam")):
        grid = cam.by_method[name].grid_scores
        assert grid is not None
        for row, column in ((0, 0), (2, 5), (3, 1)):
            browser.hover(f".panel[data-panel='{panel}'] canvas", (column + 0.5) / 6, (row + 0.5) / 4)
            shown = info(browser, ".overlay-info")
            assert (shown["panel"], shown["row"], shown["column"]) == (str(panel), str(row), str(column))
            assert float(shown["value"]) == pytest.approx(float(grid[row, column]),
                                                          abs=1e-3 * float(np.abs(grid).max()) + 1e-9)
    assert distinct_colours(browser.screenshot()) > 100

    attention = html_client.attention(image=image, model=VISION_MODEL, layers=[1], view="heads", patch_grid=True)
    grids = attention[0].layers[1]  # [heads, rows, columns]
    show(browser, to_html(attention, image=image), tmp_path)
    assert browser.evaluate("[...document.querySelectorAll('.panel')].map((p) => p.dataset.title)") == \
        [f"L1 H{head}" for head in range(grids.shape[0])]
    browser.hover(".panel[data-panel='3'] canvas", (4 + 0.5) / 6, (1 + 0.5) / 4)
    assert float(info(browser, ".overlay-info")["value"]) == pytest.approx(float(grids[3, 1, 4]), abs=1e-4)

    distance = html_client.attention(image=image, model=VISION_MODEL, view="mean_distance")[0]
    show(browser, to_html(distance), tmp_path)
    check_grid(browser, "mean_distance", distance.stacked(), (1, 2))  # [layers, heads], pixels
    assert browser.errors == []


def test_token_text_is_never_markup(browser: Browser, tmp_path: Path) -> None:
    tokens = ["[CLS]", "</script><script>alert(1)</script>", "<img src=x onerror=alert(2)>", "a&amp;b",
              "\u2028line", "<!--", "[SEP]"]
    rng = np.random.default_rng(0)
    maps = rng.random((2, len(tokens), len(tokens))).astype(np.float32)
    maps /= maps.sum(axis=-1, keepdims=True)
    item = InputAttention(tokens=tokens, token_ids=list(range(len(tokens))), truncated=False,
                          original_length=len(tokens), view="heads", heads=[0, 1], layers={0: maps})
    page = to_html(AttentionResult("<b>model</b>", "", False, [item]))
    assert page.count("</script>") == 2 and "<img" not in page and "<!--" not in page
    show(browser, page, tmp_path)
    assert texts(browser, ".hv-right .tok") == tokens
    assert browser.evaluate("document.querySelectorAll('script').length") == 2
    assert browser.evaluate("document.querySelectorAll('img, b').length") == 0
    assert browser.evaluate("document.title") == "introspect: <b>model</b>"
    browser.hover(".hv-left .tok[data-index='1']")
    np.testing.assert_allclose(values(browser, ".hv-right .tok"), maps[:, 1].mean(axis=0), atol=1e-4)
    assert browser.errors == []


def test_a_query_row_range_lists_only_its_queries(browser: Browser, tmp_path: Path) -> None:
    tokens = [f"t{index}" for index in range(6)]
    maps = np.random.default_rng(1).random((1, 3, 6)).astype(np.float32)  # rows 2..4 of head_max
    item = InputAttention(tokens=tokens, token_ids=list(range(6)), truncated=False, original_length=6,
                          view="head_max", layers={3: maps}, query_start=2)
    show(browser, to_html(item), tmp_path)
    assert texts(browser, ".hv-left .tok") == tokens[2:5] and texts(browser, ".hv-right .tok") == tokens
    assert browser.evaluate("[...document.querySelectorAll('.head-box')].map((b) => b.parentNode.textContent)") \
        == ["head_max"]
    browser.hover(".hv-left .tok[data-index='3']")
    np.testing.assert_allclose(values(browser, ".hv-right .tok"), maps[0, 1], atol=1e-4)
    browser.hover(".hv-right .tok[data-index='5']")
    np.testing.assert_allclose(values(browser, ".hv-left .tok"), maps[0, :, 5], atol=1e-4)
    browser.hover(".mv-cell[data-layer='3'] canvas", (4 + 0.5) / 6, (2 + 0.5) / 3)
    shown = info(browser, ".model-info")
    assert (shown["query"], shown["key"]) == ("4", "4")
    assert float(shown["value"]) == pytest.approx(float(maps[0, 2, 4]), abs=1e-4)
    assert browser.errors == []


def test_a_large_page_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    import introspect_client.html as html_module

    item = InputAttention(tokens=["a", "b"], token_ids=[1, 2], truncated=False, original_length=2,
                          view="head_mean", layers={0: np.full((1, 2, 2), 0.5, np.float32)})
    monkeypatch.setattr(html_module, "LARGE_PAGE_BYTES", 1000)
    with pytest.warns(UserWarning, match="fewer layers or query rows"):
        to_html(item)


def test_cli_html_flag(html_server: InProcessServer, browser: Browser, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    server = ["--server", html_server.address]
    page = tmp_path / "attention.html"
    assert main(["attention", *server, "--model", "minilm", "--text", TEXT, "--layer", "-1", "--html", str(page)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {page}"
    show(browser, page, tmp_path)
    assert texts(browser, ".layer-select option") == ["layer 5"]
    assert browser.evaluate("document.querySelectorAll('.mv-cell').length") == 1  # head_mean: one map

    lens_page, ablate_page = tmp_path / "lens.html", tmp_path / "ablate.html"
    assert main(["lens", *server, "--model", "gpt2", "--text", "the cat sat", "--html", str(lens_page)]) == 0
    assert main(["ablate", *server, "--model", "gpt2", "--text", "the cat sat", "--target", "next_token",
                 "--html", str(ablate_page), "--png", str(tmp_path / "ablate.png")]) == 0
    assert capsys.readouterr().out.split() == ["wrote", str(lens_page), "wrote", str(tmp_path / "ablate.png"),
                                               "wrote", str(ablate_page)]
    show(browser, lens_page, tmp_path)
    assert texts(browser, "section[data-name='lens'] tbody th") == [f"L{layer}" for layer in range(GPT2_LAYERS)]
    assert texts(browser, "section[data-name='lens'] thead th")[1:] == ["0 [CLS]", "1 the", "2 cat", "3 sat", "4 [SEP]"]
    show(browser, ablate_page, tmp_path)
    assert browser.evaluate("document.querySelectorAll('section[data-name=\"target_delta\"] td').length") \
        == GPT2_LAYERS * GPT2_HEADS


def test_write_html_writes_one_self_contained_file(tmp_path: Path) -> None:
    maps = np.full((1, 3, 3), 1 / 3, np.float32)
    item = InputAttention(tokens=["a", "b", "c"], token_ids=[1, 2, 3], truncated=False, original_length=3,
                          view="head_mean", layers={0: maps})
    path = tmp_path / "view.html"
    write_html(AttentionResult("m", "", False, [item]), path)
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "0.3333" in page and "0.33333" not in page
    for external in ("http://", "https://", "src=\"/", "@import", "url("):
        assert external not in page.replace("http://www.w3.org/2000/svg", "")
    with pytest.raises(TypeError, match="no HTML view"):
        to_html(object())  # type: ignore[arg-type]
    json.loads(page.split('id="introspect-data">')[1].split("</script>")[0])


def test_head_statistics_grids_hold_the_means_with_the_rest_on_hover() -> None:
    from introspect_client import HeadStatisticsResult

    mean = {"entropy": np.array([[1.5, 0.25]], np.float32), "previous_token": np.array([[0.75, 0.125]], np.float32),
            "hidden_norm": np.array([[9.0, 2.0, 3.0]], np.float32)}
    std = {name: values / 10 for name, values in mean.items()}
    result = HeadStatisticsResult("m", "", False, [], [3], [0, 2], mean, std,
                                  {"entropy": 4, "previous_token": 4, "hidden_norm": 4}, [])
    page = to_html(result)
    sections = json.loads(page.split('id="introspect-data">')[1].split("</script>")[0])["sections"]
    assert [section["name"] for section in sections] == ["entropy", "previous_token", "hidden_norm"]
    assert sections[0]["values"] == [[1.5, 0.25]] and sections[0]["rows"] == ["L3"]
    assert sections[0]["columns"] == ["H0", "H2"] and sections[2]["columns"] == ["first_token", "others_mean",
                                                                                 "others_max"]
    assert "std 0.15 over 4 inputs; dominant role: previous_token" in sections[0]["tips"][0][0]
