"""Enum value names of the contract, derived from the proto descriptors (spelled nowhere
else): each enum's values as lowercase strings without the enum's prefix and without
UNSPECIFIED, e.g. AttentionView -> ("heads", "head_mean", "head_max", "rollout").

    from introspect_contract.enums import ATTENTION_VIEW
    ATTENTION_VIEW.number("head_mean")    # pb.ATTENTION_VIEW_HEAD_MEAN
    ATTENTION_VIEW.name_of(2)             # "head_mean"; None for UNSPECIFIED or unknown
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from google.protobuf.descriptor import EnumDescriptor

from . import introspect_pb2 as pb

UNSPECIFIED = "unspecified"


def value_prefix(enum_name: str) -> str:
    """The prefix of an enum's value names, as buf's STANDARD lint requires it:
    "AttentionView" -> "ATTENTION_VIEW_"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", enum_name).upper() + "_"


@dataclass(frozen=True)
class EnumNames:
    """The plain names of one proto enum's values."""

    descriptor: EnumDescriptor
    names: tuple[str, ...]
    """Value names in number order, lowercase, without prefix and UNSPECIFIED."""
    numbers: Mapping[str, int]
    """Plain name -> number (UNSPECIFIED left out)."""
    by_number: Mapping[int, str]
    """Number -> plain name (UNSPECIFIED left out)."""

    @classmethod
    def of(cls, descriptor: EnumDescriptor) -> EnumNames:
        """The names of the enum `descriptor`."""
        prefix = value_prefix(descriptor.name)
        numbers = {
            value.name.removeprefix(prefix).lower(): value.number
            for value in sorted(descriptor.values, key=lambda value: value.number)
        }
        numbers.pop(UNSPECIFIED, None)
        return cls(
            descriptor=descriptor,
            names=tuple(numbers),
            numbers=MappingProxyType(numbers),
            by_number=MappingProxyType({number: name for name, number in numbers.items()}),
        )

    def number(self, name: str) -> int:
        """The number of plain name `name`; ValueError naming the valid names otherwise."""
        number = self.numbers.get(name)
        if number is None:
            raise ValueError(f"unknown {self.descriptor.name} {name!r}; use one of {list(self.names)}")
        return number

    def name_of(self, number: int) -> str | None:
        """The plain name of `number`; None for UNSPECIFIED (0) and unknown numbers."""
        return self.by_number.get(number)


BY_FULL_NAME: Mapping[str, EnumNames] = MappingProxyType(
    {descriptor.full_name: EnumNames.of(descriptor) for descriptor in pb.DESCRIPTOR.enum_types_by_name.values()}
)
"""Every enum of the contract, by its full proto name ("introspect.v1.AttentionView")."""


def names_of(descriptor: EnumDescriptor) -> EnumNames:
    """The names of a contract enum, by its descriptor."""
    return BY_FULL_NAME[descriptor.full_name]


DTYPE = names_of(pb.Dtype.DESCRIPTOR)
MODEL_KIND = names_of(pb.ModelKind.DESCRIPTOR)
MODALITY = names_of(pb.Modality.DESCRIPTOR)
CACHE_POLICY = names_of(pb.CachePolicy.DESCRIPTOR)
ATTENTION_VIEW = names_of(pb.AttentionView.DESCRIPTOR)
SALIENCY_METHOD = names_of(pb.SaliencyMethod.DESCRIPTOR)
BASELINE = names_of(pb.Baseline.DESCRIPTOR)
INTEGRATION_RULE = names_of(pb.IntegrationRule.DESCRIPTOR)
ABLATION_MODE = names_of(pb.AblationMode.DESCRIPTOR)
ABLATION_VALUE = names_of(pb.AblationValue.DESCRIPTOR)
CAM_POINT = names_of(pb.CamPoint.DESCRIPTOR)
PATCHING_METHOD = names_of(pb.PatchingMethod.DESCRIPTOR)
PATCH_DIRECTION = names_of(pb.PatchDirection.DESCRIPTOR)
PATCH_POINT = names_of(pb.PatchPoint.DESCRIPTOR)
PATCHING_METRIC = names_of(pb.PatchingMetric.DESCRIPTOR)
PROJECTION_METHOD = names_of(pb.ProjectionMethod.DESCRIPTOR)

TARGET_KINDS: tuple[str, ...] = tuple(field.name for field in pb.Target.DESCRIPTOR.oneofs_by_name["kind"].fields)
"""Names of the Target oneof cases ("next_token", ..., "embedding_norm")."""
