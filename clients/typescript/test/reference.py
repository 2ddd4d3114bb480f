"""Reference results from the Python client, for the TypeScript client's tests.

Run: python reference.py ADDRESS CA_PATH TOKEN < cases.json, where cases.json is a list of
  {"name": ..., "attention": {kwargs of Client.attention}}  -> the assembled result, or
  {"name": ..., "rpc": "StreamLogitLens", "request": {proto3 JSON}} -> every message of
     the stream, through the Python client's own stream path (its stub, call options and
     error translation), or with "unary": true the one response of a unary RPC.
Prints {name: result} as JSON. Messages become plain JSON the TypeScript test builds the
same way: every field under its JSON name (unset message and optional fields as null,
oneof members not chosen as null), int64 as numbers, enums as numbers, bytes as base64,
and every introspect.v1.Tensor decoded by introspect_contract.tensors.decode_tensor into
{"shape", "dtype", "data"}.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, json_format
from introspect_client import Client
from introspect_contract import pb
from introspect_contract.tensors import DTYPE_NAMES, decode_tensor


def number(value: float) -> float | str:
    """A float, or "NaN", "Infinity", "-Infinity" (JSON has no such numbers)."""
    if math.isnan(value):
        return "NaN"
    return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")


def scalar(field: descriptor.FieldDescriptor, value: Any) -> Any:
    if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
        return plain(value)
    if field.type == descriptor.FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if isinstance(value, float):
        return number(value)
    return value


def plain(message: Any) -> Any:
    if message.DESCRIPTOR.full_name == "introspect.v1.Tensor":
        array = decode_tensor(message)
        return {"shape": list(array.shape), "dtype": DTYPE_NAMES[message.dtype],
                "data": [number(float(x)) if array.dtype.kind == "f" else int(x) for x in array.ravel().tolist()]}
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.is_repeated:
            out[field.json_name] = [scalar(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            out[field.json_name] = None
        else:
            out[field.json_name] = scalar(field, value)
    return out


def attention_result(result: Any) -> Any:
    def arrays(mapping: dict[int, Any]) -> dict[str, Any]:
        return {str(layer): {"shape": list(array.shape), "data": array.astype(float).ravel().tolist()}
                for layer, array in mapping.items()}

    return {"model": result.model, "fingerprint": result.fingerprint, "cached": result.cached, "inputs": [
        {"tokens": item.tokens, "tokenIds": list(item.token_ids), "truncated": item.truncated,
         "originalLength": item.original_length, "view": item.view, "heads": list(item.heads),
         "queryStart": item.query_start, "layers": arrays(item.layers), "keyIndices": arrays(item.key_indices)}
        for item in result.inputs]}


def main() -> None:
    address, ca, token = sys.argv[1:4]
    cases = json.load(sys.stdin)
    credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca).read_bytes())
    results: dict[str, Any] = {}
    with Client(address, credentials=credentials, token=token, timeout=120) as client:
        for case in cases:
            if case.get("unary"):
                method = getattr(client._stub, case["rpc"])
                request = json_format.ParseDict(case["request"], getattr(pb, case["rpc"] + "Request")())
                results[case["name"]] = plain(method(request, **client._call_kwargs(None)))
            elif "attention" in case:
                kwargs = dict(case["attention"])
                results[case["name"]] = attention_result(client.attention(kwargs.pop("inputs"), **kwargs))
            else:
                method = getattr(client._stub, case["rpc"])
                request_type = getattr(pb, case["rpc"] + "Request")
                request = json_format.ParseDict(case["request"], request_type())
                results[case["name"]] = [plain(message) for message in client._stream(method, request, 120)]
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
