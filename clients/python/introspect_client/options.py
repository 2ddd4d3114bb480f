"""Plain option names -> request messages, shared by the sync and async clients.

Enum options are given by name ("heads", "float16", "bypass"); unknown names raise
ValueError here, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from introspect_contract import pb
from introspect_contract.enums import ATTENTION_VIEW, CACHE_POLICY, DTYPE, EnumNames
from .image_inputs import ImageLike
from .inputs import InputsLike, chosen_input, make_inputs



def enum_choices(
    names: EnumNames,
    *,
    unset: str | None = None,
    aliases: Mapping[str, str] | None = None,
    leave_out: tuple[str, ...] = (),
) -> dict[str, int]:
    """Option name -> enum number for a contract enum: its plain names (from the proto
    descriptors), `unset` (if given) for UNSPECIFIED, and `aliases` onto those names."""
    choices = {name: number for name, number in names.numbers.items() if name not in leave_out}
    if unset is not None:
        choices = {unset: 0} | choices
    for alias, name in (aliases or {}).items():
        choices[alias] = choices[name]
    return choices


VIEWS: dict[str, int] = enum_choices(ATTENTION_VIEW)
"""Attention view name -> AttentionView."""
VIEW_NAMES: dict[int, str] = {value: name for name, value in VIEWS.items()} | {pb.ATTENTION_VIEW_UNSPECIFIED: "heads"}
"""AttentionView -> name (UNSPECIFIED reads as "heads", as the server treats it)."""
VALUE_DTYPES: dict[str, int] = enum_choices(DTYPE, leave_out=tuple(name for name in DTYPE.names if "float" not in name))
"""Value dtype name (the floating-point ones) -> Dtype."""
CACHE_POLICIES: dict[str, int] = enum_choices(CACHE_POLICY, unset="use")
"""Cache policy name -> CachePolicy ("use": unset, the server's default)."""


class AttentionOptions(TypedDict, total=False):
    """Keyword options of `attention` / `stream_attention` (see `attention_request`)."""

    image: ImageLike | None
    model: str
    layers: int | Iterable[int]
    heads: int | Iterable[int]
    view: str
    top_k: int
    dtype: str
    rollout_residual_weight: float | None
    patch_grid: bool
    query_start: int
    query_end: int
    truncate: bool
    cache: str


def enum_value(names: Mapping[str, int], name: str, option: str) -> int:
    """The enum number of `name` in `names`; ValueError naming the valid ones otherwise."""
    if isinstance(name, str):
        value = names.get(name.strip().lower())
        if value is not None:
            return value
    raise ValueError(f"{option} must be one of {', '.join(names)}; got {name!r}")


def int_list(values: int | Iterable[int], option: str) -> list[int]:
    """`values` (one int or several) as a list of ints; TypeError for anything else."""
    items = [values] if isinstance(values, int) else list(values)
    for item in items:
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            raise TypeError(f"{option} must be ints, got {item!r}")
    return [int(item) for item in items]


def shared_fields(model: str, truncate: bool, cache: str) -> dict[str, Any]:
    """The fields every request has (model, truncate, cache), as keyword arguments."""
    return {"model": model, "truncate": bool(truncate), "cache": enum_value(CACHE_POLICIES, cache, "cache")}


def set_target(
    request: pb.StreamSaliencyRequest | pb.StreamHeadAblationRequest | pb.StreamPatchingRequest
    | pb.StreamShapleyHeadsRequest,
    target: pb.Target | None,
) -> None:
    """Copies `target` into `request`; None leaves it unset. TypeError for anything but a
    Target message."""
    if target is None:
        return
    if not isinstance(target, pb.Target):
        raise TypeError(f"target must be a Target message (see introspect_client.targets), got {target!r}")
    request.target.CopyFrom(target)


def attention_request(
    inputs: InputsLike | None = None,
    *,
    image: ImageLike | None = None,
    model: str = "",
    layers: int | Iterable[int] = (),
    heads: int | Iterable[int] = (),
    view: str = "heads",
    top_k: int = 0,
    dtype: str = "float32",
    rollout_residual_weight: float | None = None,
    patch_grid: bool = False,
    query_start: int = 0,
    query_end: int = 0,
    truncate: bool = False,
    cache: str = "use",
) -> pb.StreamAttentionRequest:
    """Builds an StreamAttentionRequest.

    Args:
        inputs: one input or a batch (see `make_inputs`).
        image: instead of `inputs`, one image (a path, str included, bytes, a PIL image
            or a pixel array; see `make_image_input`). Exactly one of the two is given.
        model: model name; "" selects the server's default model.
        layers: layers to return (0-based); empty means all.
        heads: query heads to return or reduce over; empty means all.
        view: "heads", "head_mean", "head_max", "rollout" or, for images,
            "mean_distance" (each head's mean attention distance in pixels).
        top_k: if > 0, only the k most attended keys of every query row (with their indices).
        dtype: element type of the returned values: "float32", "float16" or "bfloat16".
        rollout_residual_weight: rollout's identity weight; None uses the server's default (0.5).
        patch_grid: images: only the [CLS] row over the patches, as the patch grid
            (values [heads_or_1, grid_rows, grid_columns] per layer).
        query_start: first query row returned, inclusive; negative counts from the end
            of each input; 0 is the first token.
        query_end: last query row returned, exclusive; negative counts from the end;
            0 means the end. Only rows [query_start, query_end) are computed and sent.
        truncate: cut inputs longer than the model's limit instead of failing.
        cache: result cache policy: "use", "bypass" or "refresh".
    """
    request = pb.StreamAttentionRequest(
        inputs=make_inputs(chosen_input(inputs, image)),
        layers=int_list(layers, "layers"),
        heads=int_list(heads, "heads"),
        view=enum_value(VIEWS, view, "view"),  # type: ignore[arg-type]
        top_k=int(top_k),
        dtype=enum_value(VALUE_DTYPES, dtype, "dtype"),  # type: ignore[arg-type]
        patch_grid=bool(patch_grid),
        query_start=int(query_start),
        query_end=int(query_end),
        **shared_fields(model, truncate, cache),
    )
    if rollout_residual_weight is not None:
        request.rollout_residual_weight = float(rollout_residual_weight)
    return request
