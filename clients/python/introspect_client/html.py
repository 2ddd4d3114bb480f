"""Interactive HTML views of results: one self-contained page (inline CSS and JavaScript,
the data as embedded JSON, an image as a data: URI; nothing is fetched when it opens).

    from introspect_client.html import write_html

    write_html(client.attention("The cat sat on the mat.", layers=[4, 5]), "attention.html")

What each result becomes:

- attention (text): a head view (query tokens left, key tokens right, one line colour
  per head; hover a token to see its attention, choose the layer and the heads) and a
  model view (a small heatmap per layer and head; hover for the value, click to open it
  in the head view). Images: the [CLS] row over the patches on the image, one panel per
  (layer, head); the mean attention distance: a layer x head grid.
- saliency: the tokens coloured by score, the score on hover; images: the map of every
  method over the image, the value of the patch (or pixel) under the pointer.
- head ablation and importance: layer x head grids (target change and output change,
  or the gradients); a joint ablation: its scores.
- patching: per pair (and the mean) a layer x position or layer x head grid per map
  (head_position: layer x head at a chosen position).
- Shapley head values: a layer x head grid of the values (heads not chosen blank), the
  value and its standard error on hover.
- head statistics: a layer x head grid per statistic (the mean over the inputs; the
  standard deviation, the count and the head's dominant role on hover), layer x 3 for
  the hidden-state norms.
- logit lens: a layer x position grid of the tracked token's probability, the top token
  in each cell and the top-k on hover.
- query-key embeddings: an SVG scatter of one (layer, head)'s joint projection (choose
  it), queries and keys coloured apart, later positions more opaque; hover a point for
  its token, input, position and whether it is a query or a key.

Numbers in the page keep 4 significant digits of each array's largest magnitude (the
attention probabilities 4 decimals); every shown value is in the DOM as data-value.
Token text is only ever inserted as text (textContent), never as markup.
"""

from __future__ import annotations

import base64
import html as html_escape
import io
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .ablation import AblationResult
from .head_statistics import HIDDEN_NORM_COLUMNS, HeadStatisticsResult
from .image_inputs import ImageLike
from .image_layout import ImageLayout
from .logit_lens import LogitLensResult
from .patching_results import HEAD_POINTS, POSITION_POINTS, PairPatching, PatchingResult
from .query_key import QueryKeyEmbeddingsResult
from .results import AttentionResult, InputAttention
from .saliency import SaliencyResult
from .shapley import ShapleyHeadsResult

__all__ = ["to_html", "write_html"]

LARGE_PAGE_BYTES = 20_000_000
"""Pages larger than this warn (a long input's attention over many layers and heads)."""

Result = (AttentionResult | InputAttention | SaliencyResult | AblationResult | PatchingResult | LogitLensResult
          | ShapleyHeadsResult | QueryKeyEmbeddingsResult | HeadStatisticsResult)


def _rounded(values: Any, digits: int = 4, decimals: int | None = None) -> Any:
    """`values` as nested lists, rounded to `decimals` places (default: `digits`
    significant digits of the largest magnitude), NaN and infinities as None."""
    array = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(array)
    if decimals is None:
        peak = float(np.abs(array[finite]).max()) if finite.any() else 0.0
        decimals = digits if peak == 0 else digits - 1 - math.floor(math.log10(peak))
        decimals = min(max(decimals, 0), 15)
    rounded = np.round(np.where(finite, array, 0.0), decimals)
    return np.where(finite, rounded, None).tolist()


def _image_uri(image: ImageLike | None, layout: ImageLayout | None) -> str | None:
    """The image as the model saw it (resized to the processed size), as a PNG data: URI."""
    if image is None or layout is None:
        return None
    from PIL import Image

    from .plot_images import image_pixels

    buffer = io.BytesIO()
    Image.fromarray(image_pixels(image, layout.height, layout.width)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _overlay(title: str, panels: Sequence[tuple[str, np.ndarray]], layout: ImageLayout,
             image: ImageLike | None, label: str) -> dict[str, Any]:
    return {
        "type": "overlay", "title": title, "label": label, "image": _image_uri(image, layout),
        "width": layout.width, "height": layout.height,
        "panels": [{"title": name, "values": _rounded(grid)} for name, grid in panels],
    }


def _grid(title: str, name: str, values: Any, rows: Sequence[str], columns: Sequence[str], *,
          label: str = "value", slices: Sequence[str] = (), tips: Any = None, cells: Any = None) -> dict[str, Any]:
    """A grid section: values [rows][columns] (or [rows][columns][slices] with a slice
    chooser), optional per-cell text and hover tips."""
    return {"type": "grid", "title": title, "name": name, "label": label, "rows": list(rows),
            "columns": list(columns), "values": _rounded(values), "slices": list(slices),
            "tips": tips, "cells": cells}


def _attention_sections(item: InputAttention, model: str, image: ImageLike | None) -> list[dict[str, Any]]:
    if not item.layers:
        raise ValueError("the result holds no layers")
    if item.key_indices:
        raise ValueError("the HTML view needs full attention rows: ask without top_k")
    heads = [f"H{head}" for head in item.heads] if item.heads else [item.view]
    if item.view == "mean_distance":
        grid = np.stack([np.asarray(values, dtype=np.float64) for values in item.layers.values()])
        return [_grid(f"{model}: mean attention distance (pixels)", "mean_distance", grid,
                      [f"L{layer}" for layer in item.layers], heads, label="mean distance (pixels)")]
    sections: list[dict[str, Any]] = []
    first = np.asarray(next(iter(item.layers.values())))
    full_rows = first.shape[2] == len(item.tokens) and item.query_start + first.shape[1] <= len(item.tokens)
    if full_rows:
        sections.append({
            "type": "attention", "title": f"{model}: attention ({item.view})", "tokens": item.tokens,
            "query_start": item.query_start, "heads": heads, "layers": list(item.layers),
            "values": [_rounded(values, decimals=4) for values in item.layers.values()],
        })
    if item.image is not None and (not full_rows or item.query_start == 0):
        from .plot_images import attention_panels

        sections.append(_overlay(f"{model}: attention over the image ({item.view})",
                                 attention_panels(item, item.image), item.image, image, "attention probability"))
    return sections


def _saliency_sections(result: SaliencyResult, image: ImageLike | None) -> list[dict[str, Any]]:
    title = f"{result.model}: {result.method or 'saliency'}"
    if result.image is None:
        return [{"type": "tokens", "title": title, "tokens": result.tokens, "values": _rounded(result.scores),
                 "label": "attribution", "facts": [f"target score {result.target_score:.6g}"]}]
    from .plot_images import saliency_map

    panels = [(name, saliency_map(item)) for name, item in (result.by_method or {result.method: result}).items()]
    return [_overlay(title, panels, result.image, image, "attribution")]


def _ablation_sections(result: AblationResult) -> list[dict[str, Any]]:
    facts = [f"target score without ablation: {result.baseline_score:.6g}"]
    joint = result.joint
    if joint is not None:
        heads = " ".join(f"{layer}:{head}" for layer, head in joint.heads)
        facts += [f"heads ablated together: {heads}",
                  (f"target score with them ablated: {joint.ablated_score:.6g} "
                   f"({joint.ablated_score - result.baseline_score:+.6g})"),
                  f"{result.output_change_metric}: {joint.output_change:.6g}"]
        if joint.base_continuation_tokens:
            facts += ["continuation: " + " ".join(joint.base_continuation_tokens),
                      "ablated continuation: " + " ".join(joint.ablated_continuation_tokens)]
        return [{"type": "facts", "title": f"{result.model}: joint head ablation", "facts": facts}]
    grids = [("importance", "head importance (d target / d head gate)", result.importance),
             ("target_delta", "change of the target score when the head is ablated", result.target_delta),
             ("output_change", f"output change ({result.output_change_metric})", result.output_change)]
    sections: list[dict[str, Any]] = [{"type": "facts", "title": f"{result.model}: head ablation", "facts": facts}]
    for name, label, values in grids:
        if values is not None:
            layers, heads = values.shape
            sections.append(_grid(label, name, values, [f"L{layer}" for layer in range(layers)],
                                  [f"H{head}" for head in range(heads)], label=label))
    return sections


def _position_labels(tokens: Sequence[str], count: int) -> list[str]:
    return [f"{position} {tokens[position]}" if position < len(tokens) else str(position) for position in range(count)]


def _pair_sections(pair: PairPatching, tokens: Sequence[str]) -> list[dict[str, Any]]:
    where = "mean over pairs" if pair.index < 0 else f"pair {pair.index}"
    sections: list[dict[str, Any]] = []
    if pair.baseline is not None:
        sections.append({"type": "facts", "title": where, "facts": [
            f"{pair.baseline.metric}: clean {pair.baseline.clean_score:.6g}, corrupted {pair.baseline.corrupted_score:.6g}"]})
    for (method, point), patched in pair.maps.items():
        values = patched.values if patched.normalized is None else patched.normalized
        label = "metric" if patched.normalized is None else "normalized metric"
        layers = [f"L{layer}" for layer in range(values.shape[0])]
        title = f"{where}: {method} patching at {point} ({label})"
        name = f"{pair.index}:{method}:{point}"
        if point in HEAD_POINTS:
            heads = [f"H{head}" for head in range(values.shape[1])]
            slices = _position_labels(tokens, values.shape[2]) if point in POSITION_POINTS else []
            sections.append(_grid(title, name, values, layers, heads, label=label, slices=slices))
        elif point in POSITION_POINTS:
            sections.append(_grid(title, name, values, layers, _position_labels(tokens, values.shape[1]),
                                  label=label))
    attribution = pair.logit_attribution
    if attribution is not None:
        heads = attribution.heads  # [layers, heads, positions]
        sections.append(_grid(f"{where}: direct logit attribution of each head", f"{pair.index}:logit_attribution",
                              heads, [f"L{layer}" for layer in range(heads.shape[0])],
                              [f"H{head}" for head in range(heads.shape[1])], label="logit difference",
                              slices=_position_labels(tokens, heads.shape[2])))
    knockout = pair.knockout
    if knockout is not None:
        sections.append(_grid(f"{where}: attention knockout, change of the metric per window of {knockout.window}",
                              f"{pair.index}:knockout", knockout.change[None, :], ["change"],
                              [f"from {start}" for start in knockout.window_starts], label="change"))
    return sections


def _patching_sections(result: PatchingResult) -> list[dict[str, Any]]:
    sections: list[dict[str, Any]] = []
    for pair in [*result.pairs, *([result.mean] if result.mean is not None else [])]:
        clean = pair.clean or (result.pairs[0].clean if result.pairs else None)
        sections += _pair_sections(pair, clean.tokens if clean is not None else [])
    return sections


def _lens_sections(result: LogitLensResult) -> list[dict[str, Any]]:
    tips = [[", ".join(f"{token} {float(probability):.3f}" for token, probability in zip(tokens, probabilities))
             for tokens, probabilities in zip(row_tokens, row_probabilities)]
            for row_tokens, row_probabilities in zip(result.top_tokens, result.top_probabilities)]
    cells = [[tokens[0] if tokens else "" for tokens in row] for row in result.top_tokens]
    return [_grid(f"{result.model}: logit lens (probability of the tracked token, top token in the cell)", "lens",
                  result.chosen_probabilities, [f"L{layer}" for layer in result.layers],
                  [f"{position} {result.tokens[position]}" for position in result.positions],
                  label="probability", tips=tips, cells=cells)]


def _shapley_sections(result: ShapleyHeadsResult) -> list[dict[str, Any]]:
    how = "exact (every coalition)" if result.exact else (
        f"{result.permutations} sampled permutations" + (", converged" if result.converged else ""))
    facts = [f"target score with every chosen head kept: {result.full_score:.6g}",
             f"with every chosen head ablated: {result.empty_score:.6g}",
             f"{len(result.heads)} heads, {how}, {result.evaluations} coalitions evaluated"]
    values, errors = result.grid("values"), result.grid("standard_errors")
    tips = [[None if math.isnan(float(value)) else f"{float(value):.4g} \u00b1 {float(error):.2g}"
             for value, error in zip(value_row, error_row)] for value_row, error_row in zip(values, errors)]
    return [{"type": "facts", "title": f"{result.model}: Shapley head values", "facts": facts},
            _grid("Shapley value of each head (\u00b1 standard error on hover)", "shapley", values,
                  [f"L{layer}" for layer in range(result.num_layers)],
                  [f"H{head}" for head in range(result.num_heads)], label="Shapley value", tips=tips)]


def _query_key_sections(result: QueryKeyEmbeddingsResult) -> list[dict[str, Any]]:
    count = result.num_tokens
    lengths = {index: result.input_indices.count(index) for index in set(result.input_indices)}
    shades = [round(0.25 + 0.75 * (position + 1) / lengths[index], 3)
              for index, position in zip(result.input_indices, result.positions)]
    return [{
        "type": "scatter", "title": f"{result.model}: query-key embeddings ({count} tokens, queries and keys)",
        "tokens": result.tokens, "inputs": result.input_indices, "positions": result.positions, "shades": shades,
        "panels": [{"title": f"layer {item.layer}, head {item.head} (key head {item.key_head}), {item.projection}",
                    "points": _rounded(item.coordinates)} for item in result.projections],
    }]


def _head_statistics_sections(result: HeadStatisticsResult) -> list[dict[str, Any]]:
    roles = result.roles()
    sections: list[dict[str, Any]] = []
    for name, mean in result.mean.items():
        std = result.std[name]
        hidden = name == "hidden_norm"
        columns = list(HIDDEN_NORM_COLUMNS) if hidden else [f"H{head}" for head in result.heads]
        tips = [[f"mean {float(mean[row, column]):.4g}, std {float(std[row, column]):.3g} over "
                 f"{result.counts[name]} inputs" + ("" if hidden else f"; dominant role: {roles[row][column]}")
                 for column in range(mean.shape[1])] for row in range(mean.shape[0])]
        sections.append(_grid(f"{result.model}: {name.replace('_', ' ')} (mean over {result.counts[name]} inputs)",
                              name, mean, [f"L{layer}" for layer in result.layers], columns, label=name, tips=tips))
    return sections


def sections_of(result: Result, *, image: ImageLike | None = None, index: int = 0) -> list[dict[str, Any]]:
    """The page's sections (the JSON the page renders) for a result."""
    if isinstance(result, AttentionResult):
        return _attention_sections(result[index], result.model, image)
    if isinstance(result, InputAttention):
        return _attention_sections(result, "", image)
    if isinstance(result, SaliencyResult):
        return _saliency_sections(result, image)
    if isinstance(result, AblationResult):
        return _ablation_sections(result)
    if isinstance(result, PatchingResult):
        return _patching_sections(result)
    if isinstance(result, LogitLensResult):
        return _lens_sections(result)
    if isinstance(result, ShapleyHeadsResult):
        return _shapley_sections(result)
    if isinstance(result, QueryKeyEmbeddingsResult):
        return _query_key_sections(result)
    if isinstance(result, HeadStatisticsResult):
        return _head_statistics_sections(result)
    raise TypeError(f"no HTML view of {type(result).__name__}")


def _script_json(document: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' (so no '</script>' or
    '<!--'), no line separators JavaScript once choked on."""
    text = json.dumps(document, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    for character, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                               ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(character, escaped)
    return text


def to_html(result: Result, *, title: str | None = None, image: ImageLike | None = None, index: int = 0) -> str:
    """One self-contained HTML page showing `result` (attention, saliency, ablation,
    patching, logit lens or query-key embeddings). `image` is the image that was sent, drawn under image maps
    (None: the maps alone); `index` picks the input of a multi-input attention result."""
    model = getattr(result, "model", "")
    heading = title or (f"introspect: {model}" if model else "introspect")
    document = {"title": heading, "sections": sections_of(result, image=image, index=index)}
    parts = {"__TITLE__": html_escape.escape(heading), "__STYLE__": _STYLE, "__SCRIPT__": _SCRIPT,
             "__DATA__": _script_json(document)}
    # one pass: a placeholder inside a substituted title or token is left as it is
    page = re.sub("|".join(parts), lambda match: parts[match.group(0)], _TEMPLATE)
    if len(page) > LARGE_PAGE_BYTES:
        warnings.warn(f"the HTML page is {len(page) / 1e6:.0f} MB: ask for fewer layers or query rows",
                      stacklevel=2)
    return page


def write_html(result: Result, path: str | os.PathLike[str], **options: Any) -> None:
    """Writes `to_html(result, **options)` to `path` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as file:
        file.write(to_html(result, **options))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
 content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>__TITLE__</title>
<style>__STYLE__</style>
</head>
<body>
<h1 id="page-title">__TITLE__</h1>
<main id="sections"></main>
<script type="application/json" id="introspect-data">__DATA__</script>
<script>__SCRIPT__</script>
</body>
</html>
"""

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin: 24px 0 8px; }
section { margin-bottom: 24px; }
.controls { margin: 6px 0; display: flex; flex-wrap: wrap; gap: 8px; align-items: center; }
.controls label { white-space: nowrap; }
.swatch { display: inline-block; width: 10px; height: 10px; margin-right: 2px; }
.info { min-height: 1.4em; margin: 6px 0; font-family: ui-monospace, monospace; font-size: 13px; white-space: pre; }
.hv-body { display: flex; align-items: flex-start; }
.hv-column .tok { height: 20px; line-height: 20px; padding: 0 6px; font-family: ui-monospace, monospace;
  font-size: 13px; white-space: pre; cursor: default; border-radius: 3px; }
.hv-left .tok { text-align: right; }
.tok.focus { outline: 2px solid #333; }
.mv-grid { display: grid; gap: 6px; }
.mv-cell { font-size: 11px; text-align: center; cursor: pointer; }
.mv-cell canvas { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; display: block; }
.tokens .tok { display: inline-block; margin: 2px; padding: 2px 4px; border-radius: 3px;
  font-family: ui-monospace, monospace; font-size: 14px; white-space: pre; }
table.grid { border-collapse: collapse; font-size: 11px; }
table.grid th { font-weight: normal; padding: 2px 4px; white-space: pre; }
table.grid thead th { writing-mode: vertical-rl; transform: rotate(180deg); text-align: left; }
table.grid td { min-width: 28px; height: 22px; text-align: center; padding: 0 3px; border: 1px solid #fff; }
table.grid td.missing { background: #ddd; }
.panels { display: flex; flex-wrap: wrap; gap: 10px; }
.panel { font-size: 12px; text-align: center; }
.panel .stack { position: relative; }
.panel img, .panel canvas { display: block; }
.panel canvas.map { position: absolute; left: 0; top: 0; }
.facts li { font-family: ui-monospace, monospace; font-size: 13px; white-space: pre-wrap; }
"""

_SCRIPT = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("introspect-data").textContent);
  const root = document.getElementById("sections");

  function el(tag, attributes, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, value);
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }
  function fmt(value) { return value === null || value === undefined ? "n/a" : Number(value).toPrecision(4); }
  function headColour(index, count) { return "hsl(" + Math.round(360 * index / Math.max(count, 1)) + ",70%,45%)"; }
  function rgba(rgb, alpha) { return "rgba(" + rgb.join(",") + "," + alpha.toFixed(3) + ")"; }
  // diverging (blue-white-red) for signed values, white-red for non-negative ones
  function scaleOf(values) {
    let low = 0, high = 0;
    for (const value of values.flat(Infinity)) {
      if (value === null) continue;
      low = Math.min(low, value); high = Math.max(high, value);
    }
    const bound = Math.max(Math.abs(low), Math.abs(high)) || 1;
    return function (value) {
      if (value === null) return null;
      const t = Math.max(-1, Math.min(1, value / bound));
      return t >= 0 ? rgba([214, 39, 40], t) : rgba([31, 119, 180], -t);
    };
  }
  function jet(t) {
    t = Math.max(0, Math.min(1, t));
    const channel = (x) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * t - x))));
    return [channel(3), channel(2), channel(1)];
  }
  function section(spec, kind) {
    const node = el("section", {"class": kind, "data-view": kind});
    node.appendChild(el("h2", {}, spec.title));
    root.appendChild(node);
    return node;
  }
  function setInfo(info, text, attributes) {
    info.textContent = text;
    for (const [name, value] of Object.entries(attributes)) info.setAttribute("data-" + name, String(value));
  }

  // ---- attention: head view and model view -------------------------------------------
  function attentionView(spec) {
    const tokens = spec.tokens, heads = spec.heads, start = spec.query_start;
    const node = section(spec, "attention");
    // head view
    const hv = el("div", {"class": "head-view"});
    node.appendChild(el("h3", {}, "Head view"));
    node.appendChild(hv);
    const controls = el("div", {"class": "controls"});
    const layerSelect = el("select", {"class": "layer-select"});
    spec.layers.forEach((layer, index) => layerSelect.appendChild(el("option", {value: String(index)}, "layer " + layer)));
    controls.appendChild(el("label", {}, "Layer ")).appendChild(layerSelect);
    const boxes = heads.map((name, index) => {
      const label = el("label", {});
      const box = el("input", {type: "checkbox", "class": "head-box", "data-head": String(index)});
      box.checked = true;
      const swatch = el("span", {"class": "swatch"});
      swatch.style.background = headColour(index, heads.length);
      label.append(box, swatch, document.createTextNode(name));
      controls.appendChild(label);
      return box;
    });
    const allButton = el("button", {type: "button", "class": "all-heads"}, "all heads");
    const noneButton = el("button", {type: "button", "class": "no-heads"}, "no heads");
    controls.append(allButton, noneButton);
    hv.appendChild(controls);
    const info = el("div", {"class": "info head-info"});
    hv.appendChild(info);
    const body = el("div", {"class": "hv-body"});
    const left = el("div", {"class": "hv-column hv-left"});
    const right = el("div", {"class": "hv-column hv-right"});
    const svgNS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(svgNS, "svg");
    const rowHeight = 20, rows = spec.values[0][0].length;
    svg.setAttribute("width", "220");
    svg.setAttribute("height", String(rowHeight * Math.max(rows, tokens.length)));
    body.append(left, svg, right);
    hv.appendChild(body);
    const queries = [], keys = [];
    for (let row = 0; row < rows; row++) {
      const token = el("div", {"class": "tok query", "data-index": String(start + row)}, tokens[start + row]);
      left.appendChild(token); queries.push(token);
    }
    tokens.forEach((text, index) => {
      const token = el("div", {"class": "tok key", "data-index": String(index)}, text);
      right.appendChild(token); keys.push(token);
    });
    let focus = null;  // {side: "query" | "key", index}
    const selected = () => boxes.filter((box) => box.checked).map((box) => Number(box.dataset.head));
    const matrix = () => spec.values[Number(layerSelect.value)];
    function clearTokens() {
      for (const token of [...queries, ...keys]) {
        token.style.background = ""; token.removeAttribute("data-value"); token.removeAttribute("title");
        token.classList.remove("focus");
      }
    }
    function draw() {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      clearTokens();
      const chosen = selected(), values = matrix();
      // a line per (head, query, key) whose weight is 2% or more of the largest weight drawn
      // (the query's row, the key's column, or the whole map), as opaque as that fraction
      let linePeak = 1e-12;
      const rowsDrawn = focus !== null && focus.side === "query" ? [focus.index - start] : [...Array(rows).keys()];
      for (const head of chosen) for (const row of rowsDrawn) for (let key = 0; key < tokens.length; key++) {
        const weight = values[head][row][key];
        if (weight !== null && (focus === null || focus.side === "query" || key === focus.index)) linePeak = Math.max(linePeak, weight);
      }
      const lines = (row, key) => {
        chosen.forEach((head) => {
          const weight = values[head][row][key];
          if (weight === null || weight / linePeak < 0.02) return;
          const line = document.createElementNS(svgNS, "line");
          line.setAttribute("x1", "0"); line.setAttribute("x2", "220");
          line.setAttribute("y1", String(rowHeight * row + rowHeight / 2));
          line.setAttribute("y2", String(rowHeight * key + rowHeight / 2));
          line.setAttribute("stroke", headColour(head, heads.length));
          line.setAttribute("stroke-width", "2");
          line.setAttribute("stroke-opacity", (weight / linePeak).toFixed(3));
          svg.appendChild(line);
        });
      };
      if (focus === null) {
        if (rows * tokens.length * chosen.length <= 40000)
          for (let row = 0; row < rows; row++) for (let key = 0; key < tokens.length; key++) lines(row, key);
        setInfo(info, "hover a token to see its attention", {layer: spec.layers[Number(layerSelect.value)], heads: chosen.join(" ")});
        return;
      }
      const colour = chosen.length === 1 ? headColour(chosen[0], heads.length) : "hsl(220,60%,45%)";
      const mean = (row, key) => {
        if (!chosen.length) return null;
        let total = 0;
        for (const head of chosen) total += values[head][row][key];
        return total / chosen.length;
      };
      // the highlight's strength is the weight over the largest weight shown (the number is the weight)
      const paintAll = (tokensShown, weights) => {
        const peak = Math.max(1e-12, ...weights.filter((value) => value !== null));
        weights.forEach((value, index) => {
          if (value === null) return;
          const token = tokensShown[index];
          token.setAttribute("data-value", String(value));
          token.setAttribute("title", fmt(value));
          token.style.background = colour.replace("hsl", "hsla").replace(")", "," + (0.85 * value / peak).toFixed(3) + ")");
        });
      };
      if (focus.side === "query") {
        const row = focus.index - start;
        queries[row].classList.add("focus");
        const weights = [];
        for (let key = 0; key < tokens.length; key++) { lines(row, key); weights.push(mean(row, key)); }
        paintAll(keys, weights);
      } else {
        keys[focus.index].classList.add("focus");
        const weights = [];
        for (let row = 0; row < rows; row++) { lines(row, focus.index); weights.push(mean(row, focus.index)); }
        paintAll(queries, weights);
      }
      setInfo(info, focus.side + " " + focus.index + " \u201c" + tokens[focus.index] + "\u201d, layer " +
              spec.layers[Number(layerSelect.value)] + ", " + (chosen.length ? chosen.map((h) => heads[h]).join(" ") : "no heads") +
              (chosen.length > 1 ? " (mean)" : ""),
              {side: focus.side, index: focus.index, layer: spec.layers[Number(layerSelect.value)], heads: chosen.join(" ")});
    }
    queries.forEach((token, row) => token.addEventListener("mouseenter", () => { focus = {side: "query", index: start + row}; draw(); }));
    keys.forEach((token, index) => token.addEventListener("mouseenter", () => { focus = {side: "key", index: index}; draw(); }));
    body.addEventListener("mouseleave", () => { focus = null; draw(); });
    layerSelect.addEventListener("change", draw);
    boxes.forEach((box) => box.addEventListener("change", draw));
    allButton.addEventListener("click", () => { boxes.forEach((box) => { box.checked = true; }); draw(); });
    noneButton.addEventListener("click", () => { boxes.forEach((box) => { box.checked = false; }); draw(); });
    draw();

    // model view
    node.appendChild(el("h3", {}, "Model view"));
    const mv = el("div", {"class": "model-view"});
    node.appendChild(mv);
    const mvInfo = el("div", {"class": "info model-info"}, "hover a map for its value, click it to open it in the head view");
    mv.appendChild(mvInfo);
    const grid = el("div", {"class": "mv-grid"});
    grid.style.gridTemplateColumns = "repeat(" + heads.length + ", 100px)";
    mv.appendChild(grid);
    spec.layers.forEach((layer, layerIndex) => {
      heads.forEach((name, head) => {
        const cell = el("div", {"class": "mv-cell", "data-layer": String(layer), "data-head": String(head)});
        cell.appendChild(el("div", {}, "L" + layer + " " + name));
        const canvas = el("canvas", {width: String(tokens.length), height: String(rows)});
        cell.appendChild(canvas);
        grid.appendChild(cell);
        const values = spec.values[layerIndex][head];
        const context = canvas.getContext("2d");
        const image = context.createImageData(tokens.length, rows);
        let peak = 1e-12;  // each map's colours run up to its own largest weight
        for (const line of values) for (const value of line) if (value !== null) peak = Math.max(peak, value);
        for (let row = 0; row < rows; row++) for (let key = 0; key < tokens.length; key++) {
          const value = values[row][key] === null ? 0 : Math.min(1, Math.max(0, values[row][key] / peak));
          const offset = 4 * (row * tokens.length + key);
          image.data[offset] = Math.round(255 - 225 * value);
          image.data[offset + 1] = Math.round(255 - 180 * value);
          image.data[offset + 2] = Math.round(255 - 75 * value);
          image.data[offset + 3] = 255;
        }
        context.putImageData(image, 0, 0);
        canvas.addEventListener("mousemove", (event) => {
          const box = canvas.getBoundingClientRect();
          const key = Math.min(tokens.length - 1, Math.floor((event.clientX - box.left) / box.width * tokens.length));
          const row = Math.min(rows - 1, Math.floor((event.clientY - box.top) / box.height * rows));
          const value = values[row][key];
          setInfo(mvInfo, "layer " + layer + ", " + name + ": query " + (start + row) + " \u201c" + tokens[start + row] +
                  "\u201d \u2192 key " + key + " \u201c" + tokens[key] + "\u201d: " + fmt(value),
                  {layer: layer, head: head, query: start + row, key: key, value: value === null ? "" : value});
        });
        cell.addEventListener("click", () => {
          layerSelect.value = String(layerIndex);
          boxes.forEach((box, index) => { box.checked = index === head; });
          focus = null; draw();
          hv.scrollIntoView();
        });
      });
    });
  }

  // ---- saliency of tokens ------------------------------------------------------------
  function tokensView(spec) {
    const node = section(spec, "tokens");
    const info = el("div", {"class": "info token-info"}, "hover a token for its " + spec.label);
    const list = (spec.facts || []).length ? el("ul", {"class": "facts"}) : null;
    if (list) { spec.facts.forEach((fact) => list.appendChild(el("li", {}, fact))); node.appendChild(list); }
    node.appendChild(info);
    const box = el("div", {"class": "tokens"});
    node.appendChild(box);
    const colour = scaleOf(spec.values);
    spec.tokens.forEach((text, index) => {
      const value = spec.values[index];
      const token = el("span", {"class": "tok", "data-index": String(index), "data-value": value === null ? "" : String(value),
                                title: spec.label + " " + fmt(value)}, text);
      const background = colour(value);
      if (background) token.style.background = background;
      token.addEventListener("mouseenter", () => setInfo(info, "token " + index + " \u201c" + text + "\u201d: " + spec.label + " " + fmt(value),
                                                        {index: index, value: value === null ? "" : value}));
      box.appendChild(token);
    });
  }

  // ---- grids (ablation, importance, patching, logit lens, mean distance) -------------
  function gridView(spec) {
    const node = section(spec, "grid");
    node.setAttribute("data-name", spec.name);
    const controls = el("div", {"class": "controls"});
    let sliceSelect = null;
    if (spec.slices.length) {
      sliceSelect = el("select", {"class": "slice-select"});
      spec.slices.forEach((name, index) => sliceSelect.appendChild(el("option", {value: String(index)}, name)));
      controls.appendChild(el("label", {}, "Position ")).appendChild(sliceSelect);
      node.appendChild(controls);
    }
    const info = el("div", {"class": "info grid-info"}, "hover a cell for its " + spec.label);
    node.appendChild(info);
    const table = el("table", {"class": "grid"});
    node.appendChild(table);
    const colour = scaleOf(spec.values);
    const small = spec.columns.length <= 24;
    function render() {
      table.textContent = "";
      const slice = sliceSelect === null ? null : Number(sliceSelect.value);
      const head = el("thead"), headRow = el("tr");
      headRow.appendChild(el("th"));
      spec.columns.forEach((name) => headRow.appendChild(el("th", {}, name)));
      head.appendChild(headRow); table.appendChild(head);
      const tbody = el("tbody");
      spec.rows.forEach((rowName, row) => {
        const tr = el("tr");
        tr.appendChild(el("th", {}, rowName));
        spec.columns.forEach((columnName, column) => {
          let value = spec.values[row][column];
          if (slice !== null) value = value[slice];
          const cell = el("td", {"data-row": String(row), "data-column": String(column),
                                 "data-value": value === null ? "" : String(value)});
          const tip = spec.tips ? spec.tips[row][column] : "";
          cell.setAttribute("title", rowName + ", " + columnName + ": " + fmt(value) + (tip ? "\n" + tip : ""));
          if (value === null) cell.classList.add("missing");
          else cell.style.background = colour(value);
          if (spec.cells) cell.textContent = spec.cells[row][column];
          else if (small && value !== null) cell.textContent = Number(value).toPrecision(2);
          cell.addEventListener("mouseenter", () => setInfo(info,
            rowName + ", " + columnName + (slice !== null ? " at " + spec.slices[slice] : "") + ": " + spec.label + " " + fmt(value) + (tip ? "  (" + tip + ")" : ""),
            {row: row, column: column, value: value === null ? "" : value}));
          tr.appendChild(cell);
        });
        tbody.appendChild(tr);
      });
      table.appendChild(tbody);
    }
    if (sliceSelect) sliceSelect.addEventListener("change", render);
    render();
  }

  // ---- maps over an image ------------------------------------------------------------
  function overlayView(spec) {
    const node = section(spec, "overlay");
    const info = el("div", {"class": "info overlay-info"}, "hover a map for its " + spec.label);
    node.appendChild(info);
    const panels = el("div", {"class": "panels"});
    node.appendChild(panels);
    const all = spec.panels.map((panel) => panel.values);
    let low = 0, high = 0;
    for (const value of all.flat(Infinity)) if (value !== null) { low = Math.min(low, value); high = Math.max(high, value); }
    const signed = low < 0, bound = Math.max(Math.abs(low), Math.abs(high)) || 1;
    const scale = 256 / Math.max(spec.width, spec.height);
    const width = Math.round(spec.width * scale), height = Math.round(spec.height * scale);
    spec.panels.forEach((panel, index) => {
      const rows = panel.values.length, columns = panel.values[0].length;
      const box = el("div", {"class": "panel", "data-panel": String(index), "data-title": panel.title});
      box.appendChild(el("div", {}, panel.title));
      const stack = el("div", {"class": "stack"});
      stack.style.width = width + "px"; stack.style.height = height + "px";
      if (spec.image) stack.appendChild(el("img", {src: spec.image, width: String(width), height: String(height), alt: ""}));
      const canvas = el("canvas", {"class": "map", width: String(columns), height: String(rows)});
      canvas.style.width = width + "px"; canvas.style.height = height + "px";
      stack.appendChild(canvas);
      box.appendChild(stack);
      panels.appendChild(box);
      const context = canvas.getContext("2d");
      const image = context.createImageData(columns, rows);
      for (let row = 0; row < rows; row++) for (let column = 0; column < columns; column++) {
        const value = panel.values[row][column];
        const offset = 4 * (row * columns + column);
        const rgb = value === null ? [128, 128, 128] : signed ?
          (value >= 0 ? [255, Math.round(255 * (1 - value / bound)), Math.round(255 * (1 - value / bound))]
                      : [Math.round(255 * (1 + value / bound)), Math.round(255 * (1 + value / bound)), 255])
          : jet(value / bound);
        image.data.set([...rgb, spec.image ? 128 : 255], offset);
      }
      context.putImageData(image, 0, 0);
      canvas.addEventListener("mousemove", (event) => {
        const rect = canvas.getBoundingClientRect();
        const column = Math.min(columns - 1, Math.floor((event.clientX - rect.left) / rect.width * columns));
        const row = Math.min(rows - 1, Math.floor((event.clientY - rect.top) / rect.height * rows));
        const value = panel.values[row][column];
        setInfo(info, panel.title + ": row " + row + ", column " + column + ": " + spec.label + " " + fmt(value),
                {panel: index, row: row, column: column, value: value === null ? "" : value});
      });
    });
  }

  // ---- query-key embeddings: an SVG scatter per (layer, head) -----------------------
  function scatterView(spec) {
    const node = section(spec, "scatter");
    const svgNs = "http://www.w3.org/2000/svg";
    const controls = el("div", {"class": "controls"});
    const select = el("select", {"class": "panel-select"});
    spec.panels.forEach((panel, index) => select.appendChild(el("option", {value: String(index)}, panel.title)));
    controls.appendChild(el("label", {}, "Layer and head ")).appendChild(select);
    controls.appendChild(el("span", {}, "\u25cf query")).style.color = "#1b9e77";
    controls.appendChild(el("span", {}, "\u25b2 key")).style.color = "#d95f02";
    node.appendChild(controls);
    const info = el("div", {"class": "info scatter-info"}, "hover a point for its token");
    node.appendChild(info);
    const size = 480, margin = 12;
    const svg = document.createElementNS(svgNs, "svg");
    svg.setAttribute("width", String(size)); svg.setAttribute("height", String(size));
    svg.setAttribute("class", "scatter-plot");
    svg.style.border = "1px solid #ccc";
    node.appendChild(svg);
    const count = spec.tokens.length;
    function render() {
      svg.textContent = "";
      const points = spec.panels[Number(select.value)].points;
      let minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
      for (const [x, y] of points) { minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y); }
      const span = Math.max(maxX - minX, maxY - minY) || 1;
      const place = (value, low) => margin + (value - low) / span * (size - 2 * margin);
      points.forEach(([x, y], index) => {
        const isKey = index >= count, token = index % count;
        const cx = place(x, minX), cy = size - place(y, minY);
        const mark = isKey ? document.createElementNS(svgNs, "path") : document.createElementNS(svgNs, "circle");
        if (isKey) mark.setAttribute("d", "M" + cx + " " + (cy - 4) + "L" + (cx + 4) + " " + (cy + 3) + "L" + (cx - 4) + " " + (cy + 3) + "Z");
        else { mark.setAttribute("cx", String(cx)); mark.setAttribute("cy", String(cy)); mark.setAttribute("r", "3.5"); }
        mark.setAttribute("fill", isKey ? "#d95f02" : "#1b9e77");
        mark.setAttribute("fill-opacity", String(spec.shades[token]));
        mark.setAttribute("data-index", String(index));
        mark.setAttribute("data-kind", isKey ? "key" : "query");
        const text = (isKey ? "key" : "query") + " \u201c" + spec.tokens[token] + "\u201d input " + spec.inputs[token] +
          " position " + spec.positions[token];
        const title = document.createElementNS(svgNs, "title");
        title.textContent = text;
        mark.appendChild(title);
        mark.addEventListener("mouseenter", () => setInfo(info, text + "  (" + fmt(x) + ", " + fmt(y) + ")",
                                                          {index: index, kind: isKey ? "key" : "query"}));
        svg.appendChild(mark);
      });
    }
    select.addEventListener("change", render);
    render();
  }

  function factsView(spec) {
    const node = section(spec, "facts");
    const list = el("ul", {"class": "facts"});
    spec.facts.forEach((fact) => list.appendChild(el("li", {}, fact)));
    node.appendChild(list);
  }

  const views = {attention: attentionView, tokens: tokensView, grid: gridView, overlay: overlayView, facts: factsView,
                 scatter: scatterView};
  for (const spec of data.sections) views[spec.type](spec);
  document.body.setAttribute("data-ready", "true");
})();
"""
