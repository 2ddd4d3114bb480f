"""The fixed cost of a call whose result is small: through the server against in process.

    python tests/benchmarks/bench_small_calls.py [--repeats 30] [--device cpu] [--model-dir DIR]

MiniLM, each call interleaved with the others (one round calls each once, so load
changes on a shared machine hit all alike), medians of:
  head importance      all 72 heads of a 32-token input (one forward and one backward),
                       a 72-float result
  gradient saliency    the gradient of the embedding norm over a 10-token input
  attention head_mean  layer 0's head-mean map of a 10-token input
  empty stream         the floor server (transport_floor.py) answering one empty chunk
                       (what any call costs over loopback: the floor of the overhead)
each "in process" (the method's run, no gRPC) and "through the server" (a real server
over loopback with the real client, results assembled). The overhead is their
difference (goal: at most 5 ms).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from bench_attention import NullSink, text_of  # noqa: E402
from conftest import start_server  # noqa: E402
from timing import markdown_table, measure_interleaved, median_ms, model_dir, model_label, synchronized  # noqa: E402

from introspect.config import ModelSpec  # noqa: E402
from introspect.methods import method_for  # noqa: E402
from introspect.models import LoadedModel, load_model, resolve_device  # noqa: E402
from introspect.requests import AttentionQuery, HeadAblationQuery, InputSpec, SaliencyQuery, TargetSpec  # noqa: E402
from introspect_client import Client, targets  # noqa: E402
from transport_floor import floor_server  # noqa: E402

GOAL_MS = 5.0


def in_process(loaded: LoadedModel, query: object) -> Callable[[], object]:
    """The method's run for `query` in this process, results dropped."""
    method = method_for(query)
    options = method.prepare(loaded.description, query)
    return synchronized(lambda: method.run(loaded, query, options, NullSink()), loaded.device)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--model-dir", help="an encoder directory (default: the packaged MiniLM)")
    arguments = parser.parse_args()
    device = resolve_device(arguments.device)
    path = model_dir(arguments.model_dir)
    loaded = load_model(ModelSpec("minilm", path), device, "float32")
    tokenizer = loaded.text.tokenizer
    long_text, short_text = text_of(tokenizer, 32), text_of(tokenizer, 10)
    norm = TargetSpec("embedding_norm")
    server = start_server(f"--model=minilm={path}", f"--device={device}", "--dtype=float32")
    try:
        with Client(server.address) as client, floor_server([0]) as floor:
            calls: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
                "head importance (32 tokens, 72 heads)": (
                    in_process(loaded, HeadAblationQuery(model="minilm", input=InputSpec(text=long_text), target=norm,
                                                         mode="importance")),
                    lambda: client.ablate(long_text, model="minilm", target=targets.embedding_norm(),
                                          mode="importance", cache="bypass"),
                ),
                "gradient saliency (10 tokens)": (
                    in_process(loaded, SaliencyQuery(model="minilm", input=InputSpec(text=short_text), target=norm,
                                                     method="gradient")),
                    lambda: client.saliency(short_text, model="minilm", target=targets.embedding_norm(),
                                            method="gradient", cache="bypass"),
                ),
                "attention head_mean, layer 0 (10 tokens)": (
                    in_process(loaded, AttentionQuery(model="minilm", inputs=(InputSpec(text=short_text),),
                                                      layers=(0,), view="head_mean")),
                    lambda: client.attention(short_text, model="minilm", layers=[0], view="head_mean",
                                             cache="bypass"),
                ),
            }
            functions = [function for pair in calls.values() for function in pair]
            functions.append(floor.stream)
            timings = measure_interleaved(functions, arguments.repeats, warmup=2)
    finally:
        server.stop()
    rows = []
    for index, name in enumerate(calls):
        local, served = median_ms(timings[2 * index]), median_ms(timings[2 * index + 1])
        over = served - local
        rows.append([name, f"{local:.1f}", f"{served:.1f}", f"{over:+.1f}",
                     "met" if over <= GOAL_MS else f"not met (> {GOAL_MS:g} ms)"])
    rows.append(["empty stream, bare grpc.aio server and raw stub", "", f"{median_ms(timings[-1]):.1f}", "", ""])
    print(f"{model_label(arguments.model_dir)} on {device}, float32, median of {arguments.repeats} interleaved rounds\n")
    print(markdown_table(["call", "in process ms", "through the server ms", "overhead ms", "goal (<= 5 ms)"], rows))


if __name__ == "__main__":
    main()
