"""Dynamic batching of image calls: the methods with a Sharing that take images
(attention maps and their views; gradient and gradient x input saliency) merge
concurrent image calls of one model into one forward (the processed images have one size
per model, so they are stacked, not padded), and each caller gets exactly its own
results. The logit lens takes text only (it needs an LM head).

Tiny ViT (non-square, 32 x 48), DINOv2 and CLIP (dual encoder: image saliency towards a
text reference) from tests/vision.py, and MiniLM for the call that holds the worker
(tests/test_batching.py's method); images of different raw sizes, so the image processor
resizes them to the model's size. Two in-process servers, no cache, one batching and one
not: every result equals the non-batching server's (attention within 1e-6; saliency
within FLOAT32_GRADIENTS, see batching_helpers).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import vision
from batching_helpers import (
    assert_same,
    assert_same_saliency,
    batch_sizes,
    batches_of,
    plain_results,
    while_blocked,
)
from introspect_client import targets

MODELS = ("vit-classifier", "dinov2-encoder", "clip-dual")
IMAGES = [vision.draw_image(seed, size) for seed, size in ((1, (64, 48)), (2, (40, 40)), (3, (80, 50)), (4, (33, 61)))]
ATTENTION: list[dict[str, Any]] = [
    {"inputs": IMAGES[0]},
    {"inputs": [IMAGES[1], IMAGES[2]], "view": "head_mean", "patch_grid": True},
    {"inputs": IMAGES[3], "view": "mean_distance"},
    {"inputs": IMAGES[2], "view": "rollout", "heads": [1, 3]},
    {"inputs": IMAGES[1], "top_k": 3},
]
SALIENCY_TARGETS = {
    "vit-classifier": [targets.class_score(1), targets.class_score(), targets.class_score(2, probability=True)],
    "dinov2-encoder": [targets.embedding_norm()] * 3,
    "clip-dual": [targets.embedding_similarity("a dog"), targets.embedding_similarity("a cat"),
                  targets.embedding_similarity("a dog")],
}


def saliency_requests(model: str) -> list[dict[str, Any]]:
    """Gradient calls of both techniques on different images and targets."""
    methods = ["gradient", "gradient_x_input", "gradient"]
    return [{"input": image, "method": method, "target": target, "upsample": index == 1}
            for index, (image, method, target) in enumerate(zip(IMAGES, methods, SALIENCY_TARGETS[model]))]


@pytest.fixture(scope="module")
def servers(batching_servers: tuple[str, str, int]) -> tuple[str, str, int]:
    """(batching server's address, non-batching server's address, batching server's metrics port)."""
    return batching_servers


@pytest.mark.parametrize("model", ["vit-classifier", "dinov2-encoder"])
def test_image_attention_calls_run_as_one_batch_with_each_result_as_alone(servers: tuple[str, str, int],
                                                                         model: str) -> None:
    batching, plain, port = servers
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, ATTENTION, model=model))
    after = batch_sizes(port)
    assert batches_of(before, after, len(ATTENTION)) == 1, (before, after)
    for result, alone in zip(results, plain_results(plain, ATTENTION, model)):
        assert not isinstance(result, BaseException), result
        assert_same(result, alone)


@pytest.mark.parametrize("model", MODELS)
def test_image_gradient_calls_run_as_one_batch_with_each_result_as_alone(servers: tuple[str, str, int],
                                                                        model: str) -> None:
    batching, plain, port = servers
    requests = saliency_requests(model)
    before = batch_sizes(port)
    results = asyncio.run(while_blocked(batching, requests, model=model, method="saliency"))
    after = batch_sizes(port)
    assert batches_of(before, after, len(requests)) == 1, (before, after)
    for result, alone in zip(results, plain_results(plain, requests, model, method="saliency")):
        assert not isinstance(result, BaseException), result
        assert result.pixel_scores is not None and result.grid_scores is not None
        assert_same_saliency(result, alone)
        assert (result.upsampled_scores is None) == (alone.upsampled_scores is None)
