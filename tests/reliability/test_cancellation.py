"""Every call can be stopped: a cancel or a deadline, queued or mid-computation, frees
the device's single worker within about one layer, ends as CANCELLED or
DEADLINE_EXCEEDED, and logs no incident; a cancelled queued call gives its queue slot
back at once.

On an in-process server (one worker for the CPU, --max-queue 1, no cache) with 512-token
MiniLM inputs (the tiny GPT-2's 128 positions for the logit lens, which needs an LM
head; the tiny ViT classifier for integrated gradients on an image; a MiniLM token-id
pair for activation patching). The clock: a follow-up call's header, which the worker
sends when it starts the call, must arrive within FREE_BOUND_SECONDS of the cancel (the
goal is 0.5 s; the largest of these computations run for tens of seconds when nothing
stops them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from conftest import InProcessServer
from introspect_client import Client, IntrospectError, targets
from introspect_contract import pb, pb_grpc

FREE_BOUND_SECONDS = 2.5
RUNNING_SECONDS = 0.1  # how long a call computes before it is cancelled
DEADLINE_SECONDS = 0.3  # shorter than each computation here (on a CPU)
# One forward (and backward) of these takes 0.15-0.3 s on an idle machine, the tiny
# GPT-2's lens well under that: their deadlines fall inside the computation.
SHORT_DEADLINES = {"logit_lens": 0.02, "attention": 0.08, "gradient": 0.08, "importance": 0.08}
TEXT = "the cat sat on the mat and looked at the dog " * 60  # > 512 tokens: truncated to 512
IMAGE_MODEL = "vit-classifier"  # tests/vision.py's tiny ViT

# Activation patching of every (layer, head, position) of MiniLM on a 512-token pair:
# 6 x 12 x 512 patched forwards of 512 tokens (minutes when nothing stops it).
PATCH_CLEAN = [101] + [2000 + index % 700 for index in range(510)] + [102]
PATCH_CORRUPTED = PATCH_CLEAN[:5] + [3000] + PATCH_CLEAN[6:]

Start = Callable[[Client, float | None], Iterator[Any]]
NORM = {"target": targets.embedding_norm(), "truncate": True}

CALLS: dict[str, Start] = {
    "attention": lambda c, t: c.stream_attention([TEXT, f"1 {TEXT}", f"2 {TEXT}"], truncate=True, timeout=t),
    "gradient": lambda c, t: c.stream_saliency(TEXT, method="gradient", per_dimension=True, timeout=t, **NORM),
    "ig_4096_gauss_legendre": lambda c, t: c.stream_saliency(
        TEXT, method="ig", rule="gauss_legendre", steps=4096, timeout=t, **NORM),
    "smoothgrad": lambda c, t: c.stream_saliency(TEXT, method="smoothgrad", samples=64, timeout=t, **NORM),
    "occlusion": lambda c, t: c.stream_saliency(TEXT, method="occlusion", timeout=t, **NORM),
    "per_head_ablation": lambda c, t: c.stream_ablation(TEXT, mode="per_head", timeout=t, **NORM),
    "importance": lambda c, t: c.stream_ablation(TEXT, mode="importance", timeout=t, **NORM),
    "logit_lens": lambda c, t: c.stream_logit_lens(TEXT, model="gpt2", truncate=True, timeout=t),
    "shapley_heads": lambda c, t: c.stream_shapley_heads(TEXT, heads="all", max_permutations=20000, timeout=t, **NORM),
    # 3 x 512 tokens: a forward, then 72 (layer, head) PCA projections of 3072 points each
    "query_key_embeddings": lambda c, t: c.stream_query_key_embeddings(
        [TEXT, f"1 {TEXT}", f"2 {TEXT}"], truncate=True, timeout=t),
    "image_ig_4096": lambda c, t: image_integrated_gradients(c, t),
    "head_statistics": lambda c, t: c.stream_head_statistics([TEXT, f"1 {TEXT}", f"2 {TEXT}"] * 4, truncate=True,
                                                             timeout=t),
    "patching_head_position": lambda c, t: c.stream_patch(
        PATCH_CLEAN, PATCH_CORRUPTED, points=["head_position"], timeout=t, target=targets.embedding_norm()),
}


def image_integrated_gradients(client: Client, timeout: float | None) -> Iterator[Any]:
    """Integrated gradients with 4096 steps from a black image on the tiny ViT classifier
    (64 batches of 64 interpolated images, about 3.5 s; one batch about 60 ms). Sent through
    the client's stream on a raw request: the client's image inputs are not in this branch."""
    import vision

    image = pb.Input(image=pb.ImageInput(encoded=vision.encode(vision.draw_image(1), "PNG")))
    request = pb.StreamSaliencyRequest(
        model=IMAGE_MODEL, input=image, target=pb.Target(class_score=pb.ClassTarget()),
        method=pb.SALIENCY_METHOD_INTEGRATED_GRADIENTS,
        integrated_gradients=pb.IntegratedGradientsOptions(steps=4096, baseline=pb.BASELINE_BLACK),
    )
    return client._stream(client._stub.StreamSaliency, request, timeout)  # noqa: SLF001


@pytest.fixture(scope="module")
def address(model_dirs: dict[str, Path], vision_dirs: dict[str, Path]) -> Iterator[str]:
    """A server with one queue slot per device and no result cache."""
    running = InProcessServer(
        f"--model=minilm={model_dirs['minilm']}", f"--model=gpt2={model_dirs['gpt2']}",
        f"--model={IMAGE_MODEL}={vision_dirs[IMAGE_MODEL]}",
        "--max-queue=1", "--cache-bytes=0",
    )
    yield running.address
    assert running.stop() == 0


def _seconds_until_the_worker_starts_another_call(client: Client) -> float:
    """Time until a short call's header arrives (the worker sends it when it starts)."""
    asked = time.monotonic()
    follow_up = client.stream_attention("a short one", layers=[0])
    assert next(follow_up).HasField("header")
    waited = time.monotonic() - asked
    follow_up.close()
    return waited


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert not errors, [record.getMessage() for record in errors]


@pytest.mark.parametrize("name", CALLS)
def test_a_cancel_and_a_deadline_mid_computation_free_the_worker_within_a_layer(
    address: str, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Client(address) as client:
        stream = CALLS[name](client, None)
        assert next(stream).HasField("header")
        time.sleep(RUNNING_SECONDS)
        stream.close()  # cancels the call
        assert _seconds_until_the_worker_starts_another_call(client) < FREE_BOUND_SECONDS

        with pytest.raises(IntrospectError) as ended:
            for _ in CALLS[name](client, SHORT_DEADLINES.get(name, DEADLINE_SECONDS)):
                pass
        assert ended.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert _seconds_until_the_worker_starts_another_call(client) < FREE_BOUND_SECONDS
    _no_errors_logged(caplog)


def test_a_cancelled_queued_call_gives_its_slot_back_at_once(address: str, caplog: pytest.LogCaptureFixture) -> None:
    request = pb.StreamAttentionRequest(inputs=[pb.Input(text=pb.TextInput(text="queued"))], layers=[0])
    with Client(address) as client, grpc.insecure_channel(address) as channel:
        stub = pb_grpc.IntrospectionStub(channel)
        running = CALLS["ig_4096_gauss_legendre"](client, None)
        assert next(running).HasField("header")  # the worker is busy
        queued = stub.StreamAttention(request)  # takes the only queue slot
        time.sleep(0.5)
        queued.cancel()
        time.sleep(0.2)
        accepted = stub.StreamAttention(request)  # RESOURCE_EXHAUSTED if the slot were still held
        time.sleep(0.3)
        running.close()
        first = next(accepted)
        assert first.HasField("header")
        assert queued.code() == grpc.StatusCode.CANCELLED
    _no_errors_logged(caplog)
