"""Circuits on the client: building a StreamPatchingRequest from plain options (the
assembly of its stream is `patching_results`).

    result = client.patch("When Mary and John went to the store, John gave a drink to",
                          "When Mary and John went to the store, Mary gave a drink to",
                          model="gpt2", target=targets.logit_difference(5335, 1757),
                          points=["resid_pre", "head"])
    result[0].maps["activation", "resid_pre"].normalized   # [layers, positions]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias, TypedDict

from introspect_contract import pb
from introspect_contract.enums import PATCH_DIRECTION, PATCH_POINT, PATCHING_METHOD, PATCHING_METRIC
from .inputs import InputLike, make_input
from .options import CACHE_POLICIES, enum_choices, enum_value, int_list, set_target

PATCHING_METHODS: dict[str, int] = enum_choices(PATCHING_METHOD)
"""Patching method name ("activation", "attribution", "direct_logit_attribution",
"attention_knockout") -> PatchingMethod."""
PATCHING_METRICS: dict[str, int] = enum_choices(PATCHING_METRIC)
"""Metric name ("target", "kl_divergence") -> PatchingMetric."""
PATCH_POINTS: dict[str, int] = enum_choices(PATCH_POINT)
"""Patch point name ("resid_pre", "resid_post", "attn_out", "mlp_out", "head",
"head_position") -> PatchPoint."""
PATCH_DIRECTIONS: dict[str, int] = enum_choices(PATCH_DIRECTION)
"""Direction name ("denoising", "noising") -> PatchDirection."""

PairLike: TypeAlias = "tuple[InputLike, InputLike | None] | tuple[InputLike, InputLike | None, Sequence[int] | None]"
"""One (clean, corrupted) pair, optionally with its alignment (per clean position, the
corrupted position; -1 for none); corrupted may be None for the clean-only methods."""


class PatchingOptions(TypedDict, total=False):
    """Keyword options of `patch` / `stream_patch` (see `patching_request`)."""

    pairs: Iterable[PairLike] | None
    model: str
    method: str
    target: pb.Target | None
    metric: str
    points: str | Iterable[str]
    direction: str
    layers: int | Iterable[int]
    positions: int | Iterable[int]
    with_exact: bool
    knockout_queries: int | Iterable[int]
    knockout_keys: int | Iterable[int]
    window: int
    alignment: Sequence[int] | None
    batch_size: int
    cache: str


def input_pair(clean: InputLike, corrupted: InputLike | None, alignment: Sequence[int] | None = None) -> pb.InputPair:
    """One InputPair: the clean input, the corrupted one (None: not sent) and the
    alignment (None or empty: positions correspond one to one)."""
    pair = pb.InputPair(clean=make_input(clean), alignment=int_list(alignment or (), "alignment"))
    if corrupted is not None:
        pair.corrupted.CopyFrom(make_input(corrupted))
    return pair


def input_pairs(
    clean: InputLike | None,
    corrupted: InputLike | None,
    alignment: Sequence[int] | None,
    pairs: Iterable[PairLike] | None,
) -> list[pb.InputPair]:
    """The request's pairs: one from (`clean`, `corrupted`, `alignment`), or `pairs`
    ((clean, corrupted) or (clean, corrupted, alignment) tuples); TypeError unless
    exactly one of `clean` and `pairs` is given (`alignment` goes with `clean`)."""
    if (clean is None) == (pairs is None):
        raise TypeError("give either clean (and corrupted) or pairs=[(clean, corrupted), ...], exactly one of them")
    if pairs is None:
        assert clean is not None
        return [input_pair(clean, corrupted, alignment)]
    if corrupted is not None or alignment is not None:
        raise TypeError("with pairs=, give each pair's corrupted input and alignment inside the pair")
    built = []
    for index, item in enumerate(pairs):
        if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
            raise TypeError(f"pairs[{index}] must be (clean, corrupted) or (clean, corrupted, alignment), got {item!r}")
        built.append(input_pair(*item))
    if not built:
        raise ValueError("pairs must not be empty")
    return built


def _names(values: str | Iterable[str]) -> list[str]:
    return [values] if isinstance(values, str) else list(values)


def patching_request(
    clean: InputLike | None = None,
    corrupted: InputLike | None = None,
    *,
    pairs: Iterable[PairLike] | None = None,
    model: str = "",
    method: str = "activation",
    target: pb.Target | None = None,
    metric: str = "target",
    points: str | Iterable[str] = (),
    direction: str = "denoising",
    layers: int | Iterable[int] = (),
    positions: int | Iterable[int] = (),
    with_exact: bool = False,
    knockout_queries: int | Iterable[int] = (),
    knockout_keys: int | Iterable[int] = (),
    window: int = 1,
    alignment: Sequence[int] | None = None,
    batch_size: int = 0,
    cache: str = "use",
) -> pb.StreamPatchingRequest:
    """Builds a StreamPatchingRequest.

    Args:
        clean: the clean input (text, (text, text_pair), token ids or an Input).
        corrupted: its corrupted counterpart (required by "activation" and
            "attribution"; None sends none).
        pairs: instead of clean/corrupted, several (clean, corrupted) or (clean,
            corrupted, alignment) pairs; results come per pair, then their mean.
        model: model name; "" selects the server's default model.
        method: "activation", "attribution", "direct_logit_attribution" or
            "attention_knockout".
        target: the metric's target (see `introspect_client.targets`); required with
            metric "target" (a logit_difference for direct_logit_attribution).
        metric: "target" or "kl_divergence" (causal LMs).
        points: patch points ("resid_pre", "resid_post", "attn_out", "mlp_out", "head",
            "head_position"); empty: resid_pre, attn_out, mlp_out and head.
        direction: "denoising" (clean into corrupted) or "noising" (corrupted into clean).
        layers: layers to patch or report (0-based); empty means all.
        positions: clean positions to patch (negative from the end); empty means all.
        with_exact: attribution: also exact activation patching, and their correlation.
        knockout_queries / knockout_keys: attention_knockout: the query positions whose
            attention to the key positions is blocked (negative from the end).
        window: attention_knockout: consecutive layers blocked together.
        alignment: with `clean`, per clean position the corrupted position (-1: none).
        batch_size: patched rows per forward pass; 0 lets the server choose.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    request = pb.StreamPatchingRequest(
        model=model,
        pairs=input_pairs(clean, corrupted, alignment, pairs),
        method=enum_value(PATCHING_METHODS, method, "method"),  # type: ignore[arg-type]
        metric=enum_value(PATCHING_METRICS, metric, "metric"),  # type: ignore[arg-type]
        points=[enum_value(PATCH_POINTS, point, "points") for point in _names(points)],  # type: ignore[misc]
        direction=enum_value(PATCH_DIRECTIONS, direction, "direction"),  # type: ignore[arg-type]
        layers=int_list(layers, "layers"),
        positions=int_list(positions, "positions"),
        with_exact=bool(with_exact),
        batch_size=int(batch_size),
        cache=enum_value(CACHE_POLICIES, cache, "cache"),  # type: ignore[arg-type]
    )
    queries, keys = int_list(knockout_queries, "knockout_queries"), int_list(knockout_keys, "knockout_keys")
    if queries or keys or window != 1:
        request.knockout.CopyFrom(pb.KnockoutOptions(query_positions=queries, key_positions=keys, window=int(window)))
    set_target(request, target)
    return request
