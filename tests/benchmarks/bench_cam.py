"""CAMs and attention maps of a ViT-B/16: introspect's server against pytorch-grad-cam and
eager transformers in process, side by side in one run.

    python tests/benchmarks/bench_cam.py [--repeats 5] [--threads 1]

A random-weight ViTForImageClassification with the ViT-B/16 config (hidden 768, 12
layers, 12 heads, intermediate 3072, patch 16, 224 x 224, 1000 labels), built from its
config (seeded) into a temporary directory with a 224 x 224 ViTImageProcessor, served by a
real server subprocess; one drawn 224 x 224 image; target: the logit of the class the
model predicts. pytorch-grad-cam (tests/gradcam_reference.py, torchvision stubbed) runs in
this process on the same weights loaded again by plain transformers, with its ViT setup:
target layer the last block's layernorm_before, the [CLS] token dropped by the reshape
transform, the predicted class's logit as target; the server's CAM point is the same
(attention_input of the last layer). Its map is checked against the server's before
anything is timed.

  (a) Grad-CAM         server (StreamSaliency, raw gRPC) vs pytorch-grad-cam GradCAM
  (b) HiResCAM         the same with HiResCAM
  (c) four CAMs        one request (grad_cam, also hi_res_cam, xgrad_cam, layer_cam) vs
                       pytorch-grad-cam's GradCAM and HiResCAM (two passes)
  (d) attention maps   StreamAttention, all layers, heads view, float32 vs an eager forward
                       with output_attentions=True in process

Goals (the vision issue): one CAM through the server at most 1.2x pytorch-grad-cam in
process; the four CAMs of one request faster than pytorch-grad-cam's two.

Runs are interleaved (one of each per round, after a warm-up round) and timed by the wall
clock and by CPU time of this process plus the server's (timing.interleaved); with one
torch thread on each side (--threads 1, the default) CPU time is the work done, which
other processes' load barely changes. Medians; ratio = introspect's time / the
reference's (below 1: introspect is faster). Results bypass the server's cache.
pytorch-grad-cam is used as its documentation shows: the model's parameters require
gradients, so its backward also computes every weight's gradient (down to the patch
embedding); the server's parameters never require gradients and its backward stops at
the CAM layer.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from conftest import start_server  # noqa: E402
from gradcam_reference import import_grad_cam  # noqa: E402
from timing import interleaved, markdown_table  # noqa: E402
from vision import draw_image, encode, logits_module, vit_reshape_transform  # noqa: E402

from introspect_contract import pb, pb_grpc  # noqa: E402
from introspect_contract.tensors import decode_tensor  # noqa: E402

SIDE, PATCH = 224, 16
GRID = SIDE // PATCH
CAMS = {
    "grad_cam": pb.SALIENCY_METHOD_GRAD_CAM,
    "hi_res_cam": pb.SALIENCY_METHOD_HI_RES_CAM,
    "xgrad_cam": pb.SALIENCY_METHOD_XGRAD_CAM,
    "layer_cam": pb.SALIENCY_METHOD_LAYER_CAM,
}


def build_vit_b16(root: Path) -> Path:
    """A seeded random-weight ViT-B/16 classifier (1000 labels) and its 224 x 224 image
    processor, saved under root/vit-b16."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       patch_size=PATCH, image_size=SIDE, num_labels=1000)
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    model.config.architectures = [type(model).__name__]
    path = root / "vit-b16"
    model.save_pretrained(path, safe_serialization=True)
    ViTImageProcessor(size={"height": SIDE, "width": SIDE}).save_pretrained(path)
    return path


def saliency_request(png: bytes, class_index: int, method: str, also: tuple[str, ...] = ()) -> pb.StreamSaliencyRequest:
    """A CAM at the default point and layer (attention_input of the last block), upsampled
    to the processed image as pytorch-grad-cam's maps are."""
    return pb.StreamSaliencyRequest(
        model="vit-b16", input=pb.Input(image=pb.ImageInput(encoded=png)),
        target=pb.Target(class_score=pb.ClassTarget(class_index=class_index)), method=CAMS[method],
        cam=pb.CamOptions(also=[CAMS[name] for name in also]), upsample=True, cache=pb.CACHE_POLICY_BYPASS,
    )


def scaled(map_: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's min-max scaling (scale_cam_image without the resize)."""
    map_ = map_ - map_.min()
    return map_ / (1e-7 + map_.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    threads = {name: str(arguments.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}

    from transformers import AutoImageProcessor, ViTForImageClassification

    grad_cam = import_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    image = draw_image(7, size=(SIDE, SIDE))
    png = encode(image, "PNG")
    with tempfile.TemporaryDirectory() as directory:
        path = build_vit_b16(Path(directory))
        model = ViTForImageClassification.from_pretrained(path, attn_implementation="eager").eval()
        pixel_values = AutoImageProcessor.from_pretrained(path)(images=image, return_tensors="pt")["pixel_values"]
        wrapped = logits_module(model)
        with torch.no_grad():
            class_index = int(model(pixel_values=pixel_values).logits[0].argmax())
        targets = [ClassifierOutputTarget(class_index)]
        layers = [model.vit.layers[-1].layernorm_before]
        transform = vit_reshape_transform(1, GRID, GRID)
        references = {name: getattr(grad_cam, name)(model=wrapped, target_layers=layers, reshape_transform=transform)
                      for name in ("GradCAM", "HiResCAM")}

        def run_grad_cam(name: str) -> np.ndarray:
            return references[name](input_tensor=pixel_values, targets=targets)[0]

        def run_eager_attention() -> object:
            with torch.no_grad():
                return model(pixel_values=pixel_values, output_attentions=True).attentions

        server = start_server(f"--model=vit-b16={path}", "--device=cpu", "--dtype=float32", env=threads)
        channel = grpc.insecure_channel(server.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = pb_grpc.IntrospectionStub(channel)
        rows: list[list[object]] = []
        try:

            def run_server(method: str, also: tuple[str, ...] = ()) -> list[pb.SaliencyChunk]:
                chunks = [response.chunk for response in stub.StreamSaliency(saliency_request(png, class_index, method, also))
                          if response.WhichOneof("payload") == "chunk"]
                assert len(chunks) == 1 + len(also) and all(chunk.final for chunk in chunks)
                return chunks

            def run_server_attention() -> int:
                request = pb.StreamAttentionRequest(model="vit-b16", inputs=[pb.Input(image=pb.ImageInput(encoded=png))],
                                                    view=pb.ATTENTION_VIEW_HEADS, cache=pb.CACHE_POLICY_BYPASS)
                return sum(decode_tensor(response.chunk.values).size for response in stub.StreamAttention(request)
                           if response.WhichOneof("payload") == "chunk")

            # the server's maps, scaled as pytorch-grad-cam scales its own, match its maps
            differences = {}
            for method, name in (("grad_cam", "GradCAM"), ("hi_res_cam", "HiResCAM")):
                (chunk,) = run_server(method)
                grid, upsampled = decode_tensor(chunk.grid_scores), decode_tensor(chunk.upsampled_scores)
                ours = scaled(np.maximum((upsampled - grid.min()) / (1e-7 + (grid - grid.min()).max()), 0))
                differences[method] = float(np.abs(ours - run_grad_cam(name)).max())
                assert differences[method] < 1e-4, f"{method}: differs from pytorch-grad-cam by {differences[method]}"
            assert run_server_attention() == 12 * 12 * (GRID * GRID + 1) ** 2

            pid = server.process.pid
            comparisons: list[tuple[str, dict[str, Callable[[], object]], str]] = [
                ("(a) Grad-CAM", {"pytorch-grad-cam GradCAM": lambda: run_grad_cam("GradCAM"),
                                  "server grad_cam": lambda: run_server("grad_cam")},
                 f"max diff (scaled) {differences['grad_cam']:.1e}"),
                ("(b) HiResCAM", {"pytorch-grad-cam HiResCAM": lambda: run_grad_cam("HiResCAM"),
                                  "server hi_res_cam": lambda: run_server("hi_res_cam")},
                 f"max diff (scaled) {differences['hi_res_cam']:.1e}"),
                ("(c) 4 CAMs vs 2", {"pytorch-grad-cam GradCAM + HiResCAM": lambda: (run_grad_cam("GradCAM"),
                                                                                    run_grad_cam("HiResCAM")),
                                     "server grad_cam + also 3": lambda: run_server(
                                         "grad_cam", ("hi_res_cam", "xgrad_cam", "layer_cam"))}, ""),
                ("(d) attention, 12 layers x 12 heads", {"eager output_attentions": run_eager_attention,
                                                         "server StreamAttention f32": run_server_attention}, ""),
            ]
            for setting, functions, note in comparisons:
                medians = interleaved(functions, arguments.repeats, pid)
                (reference_name, reference), (ours_name, ours) = medians.items()
                rows.append([setting, reference_name, f"{reference[0] * 1000:.0f}", f"{reference[1] * 1000:.0f}", "", "",
                             note])
                rows.append([setting, ours_name, f"{ours[0] * 1000:.0f}", f"{ours[1] * 1000:.0f}",
                             f"{ours[0] / reference[0]:.2f}x", f"{ours[1] / reference[1]:.2f}x", ""])
        finally:
            channel.close()
            server.stop()
    print(f"ViT-B/16 (random weights), one 224x224 image, class {class_index}, float32 on cpu, "
          f"{torch.get_num_threads()} torch threads each side, median of {arguments.repeats} interleaved runs; "
          "ratio = server time / reference time\n")
    print(markdown_table(["setting", "what", "wall ms", "CPU ms", "ratio (wall)", "ratio (CPU)", "notes"], rows))


if __name__ == "__main__":
    main()
