"""Malformed requests for every RPC of the service, as raw bytes, seeded.

Each case is the serialized request (built by hand where the protobuf runtime would
refuse to build it: invalid UTF-8 in a string field, a truncated message) and whether an
OK answer is acceptable: only for bytes that parse into a request that may be valid
after all (random bytes and truncations that happen to parse, extreme values that a
field may accept). Invalid UTF-8, unknown enum numbers, NaN and infinite floats and
negative counts must never succeed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from introspect_contract import pb

SERVICE = pb.DESCRIPTOR.services_by_name["Introspection"]
MODEL = "gpt2"
IMAGE_MODEL = "vit-classifier"  # tests/vision.py's tiny ViT (4 x 6 patches of 8 pixels)
IMAGE_SIDE = 16


def _text(text: str = "the cat sat") -> pb.Input:
    return pb.Input(text=pb.TextInput(text=text))


def _next_token() -> pb.Target:
    return pb.Target(next_token=pb.NextTokenTarget())


def _token_pair() -> pb.InputPair:
    """A clean and a corrupted token-id input of equal length (one token differs)."""
    return pb.InputPair(clean=pb.Input(token_ids=pb.TokenIds(ids=[101, 1996, 4937, 2938])),
                        corrupted=pb.Input(token_ids=pb.TokenIds(ids=[101, 1996, 3899, 2938])))


def _png() -> pb.Input:
    """A small PNG image input."""
    import vision

    return pb.Input(image=pb.ImageInput(encoded=vision.encode(vision.draw_image(0, (IMAGE_SIDE, IMAGE_SIDE)), "PNG")))


def _pixels() -> pb.Input:
    """A small raw uint8 pixel input [3, side, side]."""
    data = bytes(range(256)) * (3 * IMAGE_SIDE * IMAGE_SIDE // 256)
    tensor = pb.Tensor(shape=[3, IMAGE_SIDE, IMAGE_SIDE], dtype=pb.DTYPE_UINT8, data=data)
    return pb.Input(image=pb.ImageInput(pixels=tensor))


VALID: dict[str, Message] = {
    "ListModels": pb.ListModelsRequest(),
    "GetModel": pb.GetModelRequest(name=MODEL),
    "GetServerInfo": pb.GetServerInfoRequest(),
    "StreamAttention": pb.StreamAttentionRequest(model=MODEL, inputs=[_text()], layers=[0], heads=[0, 1], top_k=2,
                                                 query_start=1, query_end=-1),
    "StreamSaliency": pb.StreamSaliencyRequest(
        model=MODEL, input=_text(), target=_next_token(), method=pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
        integrated_gradients=pb.IntegratedGradientsOptions(steps=4, tolerance=0.5),
    ),
    "StreamSaliency/smoothgrad": pb.StreamSaliencyRequest(
        model=MODEL, input=_text(), target=_next_token(), method=pb.SALIENCY_METHOD_SMOOTHGRAD,
        smoothgrad=pb.SmoothGradOptions(samples=2, noise_level=0.1),
    ),
    "StreamSaliency/occlusion": pb.StreamSaliencyRequest(
        model=MODEL, input=_text(), target=_next_token(), method=pb.SALIENCY_METHOD_OCCLUSION,
        occlusion=pb.OcclusionOptions(span=2),
    ),
    "StreamHeadAblation": pb.StreamHeadAblationRequest(
        model=MODEL, input=_text(), target=_next_token(), mode=pb.ABLATION_MODE_JOINT,
        heads=[pb.HeadRef(layer=0, head=1)], continuation_tokens=2,
    ),
    "StreamLogitLens": pb.StreamLogitLensRequest(model=MODEL, input=_text(), top_k=2, positions=[-1]),
    "StreamShapleyHeads": pb.StreamShapleyHeadsRequest(
        model=MODEL, input=_text(), target=_next_token(), heads=[pb.HeadRef(layer=0, head=1), pb.HeadRef(layer=2, head=3)],
        max_permutations=4, seed=1,
    ),
    "StreamQueryKeyEmbeddings": pb.StreamQueryKeyEmbeddingsRequest(
        model=MODEL, inputs=[_text(), _text("a dog ran")], layers=[1], heads=[0, 3], include_vectors=True,
    ),
    "StreamPatching": pb.StreamPatchingRequest(
        model=MODEL, pairs=[_token_pair()], method=pb.PATCHING_METHOD_ACTIVATION, target=_next_token(),
        points=[pb.PATCH_POINT_RESID_PRE], layers=[0], positions=[-1],
    ),
    "StreamPatching/dla": pb.StreamPatchingRequest(
        model=MODEL, pairs=[pb.InputPair(clean=_token_pair().clean)],
        method=pb.PATCHING_METHOD_DIRECT_LOGIT_ATTRIBUTION,
        target=pb.Target(logit_difference=pb.LogitDifferenceTarget(token_id=1996, contrast_token_id=4937)),
    ),
    "StreamPatching/knockout": pb.StreamPatchingRequest(
        model=MODEL, pairs=[pb.InputPair(clean=_token_pair().clean)], method=pb.PATCHING_METHOD_ATTENTION_KNOCKOUT,
        target=_next_token(), knockout=pb.KnockoutOptions(query_positions=[-1], key_positions=[0], window=2),
    ),
    "StreamHeadStatistics": pb.StreamHeadStatisticsRequest(
        model=MODEL, inputs=[_text()], layers=[0], heads=[1],
        statistics=[pb.HEAD_STATISTIC_ENTROPY, pb.HEAD_STATISTIC_HIDDEN_NORM, pb.HEAD_STATISTIC_INDUCTION],
        induction_length=4, induction_samples=1,
    ),
    "StreamHeadStatistics/retrieval": pb.StreamHeadStatisticsRequest(
        model=MODEL, inputs=[_text()], statistics=[pb.HEAD_STATISTIC_RETRIEVAL], retrieval_steps=2, needle_end=-1,
    ),
    "StreamAttention/image": pb.StreamAttentionRequest(
        model=IMAGE_MODEL, inputs=[_png()], layers=[1], view=pb.ATTENTION_VIEW_HEAD_MEAN, patch_grid=True,
    ),
    "StreamSaliency/image": pb.StreamSaliencyRequest(
        model=IMAGE_MODEL, input=_pixels(), target=pb.Target(class_score=pb.ClassTarget(class_index=1)),
        method=pb.SALIENCY_METHOD_GRADIENT,
    ),
    "StreamSaliency/cam": pb.StreamSaliencyRequest(
        model=IMAGE_MODEL, input=_png(), target=pb.Target(class_score=pb.ClassTarget()),
        method=pb.SALIENCY_METHOD_GRAD_CAM, upsample=True,
        cam=pb.CamOptions(layer=1, point=pb.CAM_POINT_BLOCK_INPUT, also=[pb.SALIENCY_METHOD_LAYER_CAM]),
    ),
    "StreamSaliency/image_ig": pb.StreamSaliencyRequest(
        model=IMAGE_MODEL, input=_png(), target=pb.Target(class_score=pb.ClassTarget()),
        method=pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
        integrated_gradients=pb.IntegratedGradientsOptions(baseline=pb.BASELINE_NOISE, steps=4, seed=3),
    ),
}
"""Valid, cheap requests ("RPC" or "RPC/variant"), the seeds of the mutations."""

# Values that must be refused wherever a count or size field takes them.
COUNT_FIELDS = ("top_k", "steps", "batch_size", "samples", "span", "stride", "continuation_tokens")
EXTREME_INTEGERS = (-1, -(2**31), 2**31 - 1, 10**9)
EXTREME_INTEGERS_64 = (-1, -(2**63), 2**63 - 1)
NON_FINITE = (math.nan, math.inf, -math.inf)


@dataclass(frozen=True)
class Case:
    """One malformed request."""

    rpc: str
    kind: str
    data: bytes
    may_succeed: bool

    @property
    def method(self) -> str:
        """The RPC's name."""
        return self.rpc.split("/")[0]

    @property
    def path(self) -> str:
        """The gRPC path of the RPC."""
        return f"/{SERVICE.full_name}/{self.method}"


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """The wire bytes of field `number` holding `payload` (a string, bytes or message)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _parses(rpc: str, data: bytes) -> bool:
    request_type = type(VALID[rpc])
    try:
        request_type.FromString(data)
    except DecodeError:
        return False
    return True


def _scalar_fields(
    descriptor: Descriptor, path: tuple[str, ...] = (), depth: int = 3
) -> Iterator[tuple[tuple[str, ...], FieldDescriptor]]:
    """Every scalar field of a message type and of its sub-messages (the first element of
    repeated ones), `depth` levels down."""
    for field in descriptor.fields:
        if field.type != FieldDescriptor.TYPE_MESSAGE:
            yield (*path, field.name), field
        elif depth > 0:
            name = f"{field.name}[0]" if field.is_repeated else field.name
            yield from _scalar_fields(field.message_type, (*path, name), depth - 1)


def _with(rpc: str, path: tuple[str, ...], value: object) -> bytes:
    """VALID[rpc] with the field at `path` set to `value`, serialized."""
    request = type(VALID[rpc])()
    request.CopyFrom(VALID[rpc])
    target = request
    for name in path[:-1]:
        if name.endswith("[0]"):
            items = getattr(target, name[:-3])
            target = items[0] if len(items) else items.add()
        else:
            target = getattr(target, name)
    field = target.DESCRIPTOR.fields_by_name[path[-1]]
    if field.is_repeated:
        getattr(target, path[-1]).append(value)
    else:
        setattr(target, path[-1], value)
    return request.SerializeToString()


def _invalid_utf8(rng: random.Random, rpc: str) -> Case:
    """The valid request with a string field (top-level or an input's text) that is not UTF-8."""
    broken = bytes(rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"))) + b"x"
    request = VALID[rpc]
    fields = request.DESCRIPTOR.fields_by_name
    if "inputs" in fields or "input" in fields:
        number = fields["inputs" if "inputs" in fields else "input"].number
        text = length_delimited(1, length_delimited(1, broken))  # Input.text (TextInput).text
        return Case(rpc, "utf8", request.SerializeToString() + length_delimited(number, text), False)
    if fields:
        number = next(iter(request.DESCRIPTOR.fields)).number  # model / name
        return Case(rpc, "utf8", request.SerializeToString() + length_delimited(number, broken), False)
    return Case(rpc, "utf8", length_delimited(1, broken), True)  # ListModels: an unknown field


def _unused(rpc: str, path: tuple[str, ...]) -> bool:
    """Whether `path` lies in a sub-message the valid request leaves unset (another
    method's options): its integers are not looked at."""
    top = path[0].removesuffix("[0]")
    value = getattr(VALID[rpc], top)
    return len(path) > 1 and not (len(value) if path[0].endswith("[0]") else VALID[rpc].HasField(top))


def _field_mutation(rng: random.Random, rpc: str) -> Case | None:
    """An unknown enum number, a non-finite float, or an extreme integer in one field."""
    fields = list(_scalar_fields(VALID[rpc].DESCRIPTOR))
    if not fields:
        return None
    path, field = rng.choice(fields)
    if field.enum_type is not None:
        number = rng.choice((99, 12345, 2**31 - 1, -7))
        return Case(rpc, "enum", _with(rpc, path, number), False)
    if field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return Case(rpc, "nan", _with(rpc, path, rng.choice(NON_FINITE)), False)
    if field.type in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        wide = field.type == FieldDescriptor.TYPE_INT64
        value = rng.choice(EXTREME_INTEGERS_64 if wide else EXTREME_INTEGERS)
        negative_count = path[-1] in COUNT_FIELDS and value < 0
        return Case(rpc, "integer", _with(rpc, path, value), not negative_count or _unused(rpc, path))
    if field.type == FieldDescriptor.TYPE_STRING:
        names_a_model = path in (("model",), ("name",))  # NOT_FOUND; an input's text may be fine
        return Case(rpc, "long-string", _with(rpc, path, "m" * 100_000), not names_a_model)
    return None


def _random_bytes(rng: random.Random, rpc: str) -> Case:
    data = rng.randbytes(rng.randint(0, 64))
    return Case(rpc, "random", data, _parses(rpc, data))


def _truncated(rng: random.Random, rpc: str) -> Case:
    valid = VALID[rpc].SerializeToString()
    data = valid[: rng.randint(0, max(len(valid) - 1, 0))]
    return Case(rpc, "truncated", data, _parses(rpc, data))


def _image_field(rpc: str) -> int | None:
    """The number of the field holding the seed's image input, None for text seeds."""
    request = VALID[rpc]
    fields = request.DESCRIPTOR.fields_by_name
    name = "inputs" if "inputs" in fields else "input" if "input" in fields else None
    if name is None:
        return None
    value = getattr(request, name)
    first = (value[0] if len(value) else None) if fields[name].is_repeated else value
    return fields[name].number if first is not None and first.HasField("image") else None


def _bad_images(rng: random.Random) -> list[bytes]:
    """Serialized ImageInputs that no server may accept: bytes that are no image, a cut PNG,
    pixel tensors whose shape, dtype or data do not fit, float pixels outside [0, 1]."""
    side = IMAGE_SIDE
    png = _png().image.encoded

    def pixels(shape: list[int], dtype: int, data: bytes) -> bytes:
        return pb.ImageInput(pixels=pb.Tensor(shape=shape, dtype=dtype, data=data)).SerializeToString()

    nan = bytes.fromhex("0000c07f")  # float32 NaN, little-endian
    return [
        pb.ImageInput(encoded=rng.randbytes(rng.randint(1, 200))).SerializeToString(),
        pb.ImageInput(encoded=png[: rng.randint(1, len(png) - 1)]).SerializeToString(),
        pb.ImageInput(encoded=png[:8] + rng.randbytes(64)).SerializeToString(),
        pixels([rng.choice((2, 4, 0)), side, side], pb.DTYPE_UINT8, bytes(rng.choice((2, 4, 0)) * side * side)),
        pixels([3, side, side], rng.choice((pb.DTYPE_FLOAT16, pb.DTYPE_INT32, pb.DTYPE_BFLOAT16)),
               bytes(3 * side * side)),
        pixels([3, side, side], pb.DTYPE_UINT8, rng.randbytes(rng.randint(0, 3 * side * side - 1))),
        pixels([3, side, rng.choice((-1, 2**40, 2**62))], pb.DTYPE_UINT8, bytes(3 * side)),
        pixels([1, side, side], pb.DTYPE_FLOAT32, nan * (side * side)),
        pixels([1, 1, 2], pb.DTYPE_FLOAT32, bytes.fromhex("0000803f") + bytes.fromhex("0000c03f")),  # 1.0, 1.5
    ]


def _image_mutation(rng: random.Random, rpc: str) -> Case | None:
    """An image seed whose image is replaced by a bad one (a later field wins on the wire)."""
    number = _image_field(rpc)
    if number is None:
        return None
    image = rng.choice(_bad_images(rng))
    data = VALID[rpc].SerializeToString() + length_delimited(number, length_delimited(3, image))  # Input.image
    return Case(rpc, "image", data, False)


_MAKERS: tuple[Callable[[random.Random, str], Case | None], ...] = (
    _random_bytes, _truncated, _invalid_utf8, _field_mutation, _field_mutation, _image_mutation,
)


def targeted(rpc: str) -> Iterator[Case]:
    """For every field of the RPC's request (and its sub-messages): an unknown number in
    each enum, NaN and infinity in each float, -1 in each count."""
    for path, field in _scalar_fields(VALID[rpc].DESCRIPTOR):
        if field.enum_type is not None:
            yield Case(rpc, "enum", _with(rpc, path, 99), False)
        elif field.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
            yield Case(rpc, "nan", _with(rpc, path, math.nan), False)
            yield Case(rpc, "nan", _with(rpc, path, -math.inf), False)
        elif path[-1] in COUNT_FIELDS:
            yield Case(rpc, "integer", _with(rpc, path, -1), _unused(rpc, path))
    number = _image_field(rpc)
    if number is not None:
        for image in _bad_images(random.Random(rpc)):
            data = VALID[rpc].SerializeToString() + length_delimited(number, length_delimited(3, image))
            yield Case(rpc, "image", data, False)


def cases(seed: int, count: int) -> list[Case]:
    """The targeted cases of every RPC, then random ones spread over every RPC up to
    `count`, the same for the same seed."""
    rng = random.Random(seed)
    rpcs = list(VALID)
    made = [case for rpc in rpcs for case in targeted(rpc)][:count]
    while len(made) < count:
        case = rng.choice(_MAKERS)(rng, rpcs[rng.randrange(len(rpcs))])
        if case is not None:
            made.append(case)
    return made
