"""A graceful stop, on a real server process: SIGTERM while a Watch stream is open, one
short call is in flight and one long call waits behind it (one worker per device).

What is checked: health says NOT_SERVING for the drain (Check for the server, the service
and a model, and Watch, whose stream then ends), a new call is refused UNAVAILABLE, the short call completes with the result
a reference computation gives, the long one is cancelled at the grace (CANCELLED or
UNAVAILABLE, never INTERNAL), and the process exits 0 soon after the grace.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
from conftest import SERVER_START_TIMEOUT_SECONDS, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
import pytest
from introspect_client import AsyncClient, IntrospectError
from services import long_text, server_env
from test_saliency import CASES, occlusion_reference, reference_of

GRACE_SECONDS = 2.0
EXIT_BOUND_SECONDS = GRACE_SECONDS + 5  # the goal is grace + 1 s; loose on a shared machine
SHORT_TEXT = long_text(80)  # gpt2, 1 forward per token: well under a second
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


async def _check(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(reply.status)


async def test_sigterm_drains_health_finishes_short_calls_and_cancels_long_ones_at_the_grace(
    model_dirs: dict[str, Path],
) -> None:
    server = start_server(
        f"--model=gpt2={model_dirs['gpt2']}", f"--model=minilm={model_dirs['minilm']}",
        f"--grace-seconds={GRACE_SECONDS}", env=server_env(),
    )
    try:
        async with grpc.aio.insecure_channel(server.address) as channel, AsyncClient(server.address) as client:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == SERVING
            short = client.stream_saliency(
                SHORT_TEXT, model="gpt2", target=CASES["gpt2"].target, method="occlusion", replacement="pad",
                batch_size=1, cache="bypass",
            )
            short_messages = [await anext(short), await anext(short)]  # the header, a first partial result
            # minilm over 512 tokens, one forward per token: about a minute uncancelled
            long = client.stream_saliency(
                long_text(600), model="minilm", target=CASES["minilm-norm"].target, method="occlusion",
                batch_size=1, truncate=True, cache="bypass",
            )
            long_started = asyncio.ensure_future(anext(long))
            await asyncio.sleep(0.2)  # the long call reaches the server and queues

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            rest = asyncio.ensure_future(_drain(short))
            assert (await watch.read()).status == NOT_SERVING
            assert await watch.read() == grpc.aio.EOF and await watch.code() == grpc.StatusCode.OK
            assert await _check(server.address) == NOT_SERVING
            assert await _check(server.address, "introspect.v1.Introspection") == NOT_SERVING
            assert await _check(server.address, "introspect.v1.Introspection/gpt2") == NOT_SERVING
            with pytest.raises(IntrospectError) as refused:
                await client.saliency("refused", model="gpt2", target=CASES["gpt2"].target, method="gradient")
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
            short_messages += await rest
            finished_short = time.monotonic() - signalled
            with pytest.raises(IntrospectError) as cancelled:
                await long_started
                await _drain(long)
            long_code = cancelled.value.code
            cancelled_long = time.monotonic() - signalled
        exit_code = await asyncio.to_thread(server.process.wait, SERVER_START_TIMEOUT_SECONDS)
        exited = time.monotonic() - signalled
    finally:
        server.stop()
    output = "".join(server.output)

    assert finished_short < GRACE_SECONDS, finished_short
    final = short_messages[-1].chunk
    assert final.final and final.token_start == 0
    reference = reference_of(model_dirs, "gpt2", SHORT_TEXT)
    assert final.token_end == reference.input_ids.shape[1]
    expected = occlusion_reference(reference, 1, reference.tokenizer.pad_token_id)  # type: ignore[attr-defined]
    # drops are differences of log-probabilities near -10, whose float32 spacing is 9.5e-7
    np.testing.assert_allclose(np.frombuffer(final.scores.data, dtype="<f4"), expected, rtol=1e-4, atol=4e-6)

    assert long_code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE), long_code
    assert GRACE_SECONDS - 0.5 < cancelled_long < EXIT_BOUND_SECONDS, cancelled_long
    assert "draining 2 calls" in output, output  # both calls were in flight at the SIGTERM
    assert exit_code == 0, output
    assert exited < EXIT_BOUND_SECONDS, f"exited {exited:.1f}s after SIGTERM (grace {GRACE_SECONDS}s)"
    assert "Traceback" not in output, output
    print(f"short call done {finished_short:.2f}s, long call cancelled {cancelled_long:.2f}s, "
          f"exit {exited:.2f}s after SIGTERM (grace {GRACE_SECONDS}s)")


async def _drain(stream) -> list[object]:  # type: ignore[no-untyped-def]
    return [message async for message in stream]
