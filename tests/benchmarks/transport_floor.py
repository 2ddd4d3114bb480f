"""The transport floor: the same message sizes streamed by a bare grpc.aio server that
sends pre-serialized bytes (random data in StreamAttentionResponse chunks), received with
the raw stub: what gRPC over loopback costs for those bytes, with no server work.

    python tests/benchmarks/transport_floor.py SIZE,SIZE,... [OPTIONS_JSON]   (serves; prints its port)

Benchmarks use `floor_stub(sizes)`: the floor server in a subprocess (its own event loop
and GIL, as the real server has) and a raw stub on it; `floor_server(sizes, options)`
also gives the server's pid and takes gRPC channel options for both ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from introspect_contract import pb, pb_grpc  # noqa: E402

MAX_RECEIVE = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def serve_bytes(sizes: list[int], options: Sequence[tuple[str, int]] = ()) -> None:
    """Streams messages of `sizes` bytes for every StreamAttention call; prints its port."""
    chunks = [pb.AttentionChunk(values=pb.Tensor(data=os.urandom(max(size - 16, 0)))) for size in sizes]
    payloads = [pb.StreamAttentionResponse(chunk=chunk).SerializeToString() for chunk in chunks]

    async def stream(request: pb.StreamAttentionRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        for payload in payloads:
            yield payload

    async def run() -> None:
        server = grpc.aio.server(options=[("grpc.max_send_message_length", 64 * 1024 * 1024), *options])
        handler = grpc.unary_stream_rpc_method_handler(stream, request_deserializer=pb.StreamAttentionRequest.FromString)
        service = pb.DESCRIPTOR.services_by_name["Introspection"].full_name
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {"StreamAttention": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()

    asyncio.run(run())


@dataclass(frozen=True)
class Floor:
    """A running floor server: a raw stub on it and its process id."""

    stub: pb_grpc.IntrospectionStub
    pid: int

    def stream(self) -> list[pb.StreamAttentionResponse]:
        """One call's messages, parsed (what the floor's time covers)."""
        return list(self.stub.StreamAttention(pb.StreamAttentionRequest()))


@contextmanager
def floor_server(sizes: list[int], options: Sequence[tuple[str, int]] = ()) -> Iterator[Floor]:
    """The floor server streaming `sizes` in a subprocess, with channel `options` on
    both ends."""
    process = subprocess.Popen([sys.executable, __file__, ",".join(map(str, sizes)), json.dumps(list(options))],
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        port = process.stdout.readline().strip()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[*MAX_RECEIVE, *options]) as channel:
            yield Floor(pb_grpc.IntrospectionStub(channel), process.pid)
    finally:
        process.kill()
        process.wait()


@contextmanager
def floor_stub(sizes: list[int]) -> Iterator[pb_grpc.IntrospectionStub]:
    """A raw stub on a floor server streaming `sizes`: call
    `list(stub.StreamAttention(pb.StreamAttentionRequest()))` to time the floor."""
    with floor_server(sizes) as floor:
        yield floor.stub


if __name__ == "__main__":
    serve_bytes([int(size) for size in sys.argv[1].split(",")],
                [tuple(item) for item in json.loads(sys.argv[2])] if len(sys.argv) > 2 else ())
