"""Integrated gradients: introspect against Captum's LayerIntegratedGradients, side by
side in one run.

    python tests/benchmarks/bench_saliency.py [--tokens 100] [--steps 50] [--repeats 5] [--device cpu] [--model-dir DIR]

MiniLM (the packaged all-MiniLM-L6-v2), one English text cut to --tokens tokens, target:
the norm of the mean-pooled embedding (--target similarity: cosine to a reference text),
pad baseline (special tokens kept), attributions on the word-embedding layer. Both sides
use the same loaded model object (so the same attention kernels); Captum's attributions
are checked against introspect's before anything is timed.

Equal steps (same rule, steps and points per batch; Captum with its convergence delta,
which introspect always reports):
  captum    LayerIntegratedGradients.attribute(..., internal_batch_size=B,
            return_convergence_delta=True)
  method    introspect's saliency method in process (no gRPC), batch B and automatic
  server    StreamSaliency through a real server subprocess with the real client

Early stopping, against Captum's default (50 Gauss-Legendre steps, batch B): for a
tolerance of a fraction (--fractions) of |f(input) - f(baseline)| that Captum's 50 steps
meet, introspect with that tolerance through the server: the default progressive rule
(the trapezoid rule, refinements at 5, 9, 17, 33, ... points reusing every point) and
Gauss-Legendre (8, 16, 32, ... fresh points each), automatic batch.

Runs of the compared functions are interleaved (one of each per round) so that load from
other processes hits them alike. Each run is timed by the wall clock and by CPU time (this
process plus the server process); with one torch thread (--threads 1, the default) CPU
time is the work done, which other processes' load barely changes (with more threads,
waiting threads spin and inflate it). Medians; ratios are Captum's CPU time / introspect's.

--device cuda runs both sides (and the server) on the GPU; host CPU time says little
there, so ratios are of wall time (in-process runs wait for the GPU before the clock
stops). --model-dir replaces MiniLM by another BERT encoder directory (the GPU check's
stand-in). Captum imports matplotlib for its plots only: where matplotlib is not
installed (the GPU image), a stub module stands in for it, since nothing is drawn.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]



def _stub_matplotlib_if_missing() -> None:
    """Lets `import captum.attr` work without matplotlib: its visualization module
    imports matplotlib (and mpl_toolkits) names at import time, used only to plot."""
    import importlib.abc
    import importlib.machinery
    import types

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        return

    class Stub(types.ModuleType):
        def __getattr__(self, name: str) -> object:
            if name.startswith("__"):
                raise AttributeError(name)
            return type(name, (), {})

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
            if fullname.split(".")[0] in ("matplotlib", "mpl_toolkits"):
                return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
            return None

        def create_module(self, spec):  # type: ignore[no-untyped-def]
            return Stub(spec.name)

        def exec_module(self, module: types.ModuleType) -> None:
            module.__path__ = []  # type: ignore[attr-defined]

    sys.meta_path.insert(0, Finder())


_stub_matplotlib_if_missing()

from captum.attr import LayerIntegratedGradients  # noqa: E402
from conftest import start_server  # noqa: E402
from timing import interleaved, markdown_table, model_dir, model_label  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from introspect.config import ModelSpec  # noqa: E402
from introspect.methods import method_for  # noqa: E402
from introspect.models import LoadedModel, load_model, resolve_device  # noqa: E402
from introspect.requests import InputSpec, IntegratedGradientsSettings, SaliencyQuery, TargetSpec  # noqa: E402
from introspect_client import Client, SaliencyResult, targets  # noqa: E402

CAPTUM_METHODS = {"gauss_legendre": "gausslegendre", "riemann_middle": "riemann_middle"}
REFERENCE_TEXT = "A short sentence about how transformers attend to tokens."
PROSE = (
    "Integrated gradients attributes a model's prediction to its input features by accumulating "
    "gradients along a straight path from a baseline to the input. It satisfies completeness: the "
    "attributions add up to the difference between the model's output at the input and at the "
    "baseline. In practice the integral is approximated with a quadrature rule, and the number of "
    "steps decides how close the sum comes to that difference. Too few steps leave a large gap, too "
    "many waste computation on a long input. Attention maps, in contrast, say where a layer looks, "
    "not what the output owes to each word, and occlusion answers the question by removing words one "
    "at a time and running the model again for every one of them. "
)


def text_of(tokenizer: AutoTokenizer, tokens: int) -> str:
    """English prose that tokenizes to exactly `tokens` tokens with special tokens."""
    ids = tokenizer(PROSE * (1 + tokens // 100), add_special_tokens=False)["input_ids"][: tokens - 2]
    return tokenizer.decode(ids)


RATIO_OF = 1
"""Which timing ratios compare: 1 (CPU time), or 0 (wall time: on a GPU)."""


def row(setting: str, name: str, timing: tuple[float, float], captum: tuple[float, float], note: str) -> list[object]:
    """A table row: wall and CPU milliseconds and the ratio to Captum (CPU or wall time)."""
    return [setting, name, f"{timing[0] * 1000:.0f}", f"{timing[1] * 1000:.0f}",
            f"{captum[RATIO_OF] / timing[RATIO_OF]:.2f}x", note]


class ResultSink:
    """Keeps the method's results (the in-process timing)."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def check(self) -> None:
        """Never cancelled."""

    def emit(self, item: object) -> None:
        """Keeps the item."""
        self.items.append(item)


def captum_forward(loaded: LoadedModel, reference: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(input_ids) -> [batch] target scores on the same model, written for Captum."""

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        hidden = loaded.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).last_hidden_state
        pooled = hidden.mean(dim=1)
        if reference is None:
            return pooled.norm(dim=-1)
        return torch.nn.functional.cosine_similarity(pooled, reference[None], dim=-1)

    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=10, help="points per batch on both sides")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--target", choices=("norm", "similarity"), default="norm")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.01, 0.001])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the server")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--model-dir", help="a BERT encoder directory (default: the packaged MiniLM)")
    arguments = parser.parse_args()
    global RATIO_OF
    torch.set_num_threads(arguments.threads)
    threads = {name: str(arguments.threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    device = resolve_device(arguments.device)
    RATIO_OF = 0 if device.type == "cuda" else 1
    path = model_dir(arguments.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    loaded = load_model(ModelSpec("minilm", path), device, "float32")
    text = text_of(tokenizer, arguments.tokens)
    input_ids = torch.tensor([tokenizer(text)["input_ids"]], device=device)
    assert input_ids.shape[1] == arguments.tokens, input_ids.shape
    special = torch.tensor([[token in tokenizer.all_special_ids for token in input_ids[0].tolist()]], device=device)
    baseline_ids = torch.where(special, input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))

    similarity = arguments.target == "similarity"
    target_spec = (
        TargetSpec("embedding_similarity", reference=InputSpec(text=REFERENCE_TEXT)) if similarity
        else TargetSpec("embedding_norm")
    )
    client_target = targets.embedding_similarity(REFERENCE_TEXT) if similarity else targets.embedding_norm()
    reference = None
    if similarity:
        with torch.no_grad():
            reference = loaded.model(**tokenizer(REFERENCE_TEXT, return_tensors="pt").to(device)).last_hidden_state.mean(dim=1)[0]
    captum = LayerIntegratedGradients(captum_forward(loaded, reference), loaded.model.get_input_embeddings())
    batch = arguments.batch_size

    def run_captum(rule: str, steps: int) -> tuple[torch.Tensor, float]:
        attributions, delta = captum.attribute(
            input_ids, baselines=baseline_ids, n_steps=steps, method=CAPTUM_METHODS[rule],
            internal_batch_size=batch, return_convergence_delta=True,
        )
        return attributions[0].sum(dim=-1).detach().cpu(), float(delta.abs())

    def run_method(rule: str, steps: int, batch_size: int) -> object:
        query = SaliencyQuery(
            model="minilm", input=InputSpec(text=text), target=target_spec, method="integrated_gradients",
            integrated_gradients=IntegratedGradientsSettings(baseline="pad", rule=rule, steps=steps, batch_size=batch_size),
        )
        method = method_for(query)
        sink = ResultSink()
        method.run(loaded, query, method.prepare(loaded.description, query), sink)  # type: ignore[arg-type]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return sink.items[-1]

    server = start_server(f"--model=minilm={path}", f"--device={device}", "--dtype=float32", env=threads)
    rows: list[list[object]] = []
    try:
        with Client(server.address) as client:

            def run_server(rule: str, steps: int, batch_size: int, tolerance: float = 0.0) -> SaliencyResult:
                return client.saliency(
                    text, model="minilm", target=client_target, method="ig", baseline="pad", rule=rule,
                    steps=steps, batch_size=batch_size, tolerance=tolerance, cache="bypass",
                )

            steps = arguments.steps
            for rule in ("gauss_legendre", "riemann_middle"):
                expected, captum_delta = run_captum(rule, steps)
                ours = run_server(rule, steps, batch)
                difference = float((torch.from_numpy(ours.scores) - expected).abs().max())
                assert difference <= 1e-3 * float(expected.abs().max()), f"{rule}: differs from Captum by {difference}"
                medians = interleaved({
                    f"captum, batch {batch}": lambda: run_captum(rule, steps),
                    f"method, batch {batch}": lambda: run_method(rule, steps, batch),
                    "method, auto batch": lambda: run_method(rule, steps, 0),
                    f"server, batch {batch}": lambda: run_server(rule, steps, batch),
                    "server, auto batch": lambda: run_server(rule, steps, 0),
                }, arguments.repeats, server.process.pid)
                captum_timing = medians[f"captum, batch {batch}"]
                for index, (name, timing) in enumerate(medians.items()):
                    note = f"max diff vs Captum {difference:.1e}, delta {captum_delta:.1e}" if index == 0 else ""
                    rows.append(row(f"{rule}, {steps} steps", name, timing, captum_timing, note))

            _, captum_delta = run_captum("gauss_legendre", 50)
            exact = run_server("gauss_legendre", 50, 0)
            difference = abs(exact.target_score - exact.baseline_score)
            for fraction in arguments.fractions:
                tolerance = fraction * difference
                label = f"tolerance {fraction:g} x |f(x)-f(x')| = {tolerance:.2g}"
                if captum_delta > tolerance:
                    rows.append([label, "captum, 50 steps", "-", "-", "-", f"misses it: delta {captum_delta:.1e}"])
                    continue
                # progressive runs may go past Captum's 50 steps to meet the tolerance
                stopped = {rule: run_server(rule, 129, 0, tolerance) for rule in ("default", "gauss_legendre")}
                medians = interleaved({
                    f"captum, 50 steps, batch {batch}": lambda: run_captum("gauss_legendre", 50),
                    "server, early stop, default (trapezoid)": lambda: run_server("default", 129, 0, tolerance),
                    "server, early stop, gauss_legendre": lambda: run_server("gauss_legendre", 129, 0, tolerance),
                }, arguments.repeats, server.process.pid)
                # trapezoid refinements nest (each reuses all earlier points);
                # Gauss-Legendre ones evaluate fresh points
                evaluated = {
                    "default": stopped["default"].steps,
                    "gauss_legendre": sum(item.steps for item in stopped["gauss_legendre"].refinements),
                }
                notes = [f"delta {captum_delta:.1e}"] + [
                    f"stopped at {result.steps} steps, {evaluated[rule]} points evaluated, "
                    f"delta {result.convergence_delta:.1e}"
                    for rule, result in stopped.items()
                ]
                captum_timing = medians[f"captum, 50 steps, batch {batch}"]
                for (name, timing), note in zip(medians.items(), notes):
                    rows.append(row(label, name, timing, captum_timing, note))
    finally:
        server.stop()
    clock = "wall" if RATIO_OF == 0 else "CPU"
    print(f"{model_label(arguments.model_dir)}, {arguments.tokens} tokens of English prose, target {arguments.target}, pad baseline, "
          f"float32 on {device}, {torch.get_num_threads()} torch threads, median of {arguments.repeats} interleaved "
          f"runs; ratio = Captum's {clock} time / this {clock} time\n")
    print(markdown_table(["setting", "what", "wall ms", "CPU ms", f"vs Captum ({clock})", "notes"], rows))


if __name__ == "__main__":
    main()
