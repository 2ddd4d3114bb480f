"""Exact or refused, on every architecture the catalogue (tests/architectures.py) builds.

Each served architecture goes through one real server and the real client and is
compared with the same weights loaded by plain transformers with eager attention
(`output_attentions=True`): attention maps on a padded batch of two inputs, gradient
saliency (target score and per-token gradient norms against autograd) and the ablation
baseline score on one input, all within 1e-4. Every other architecture must be refused
at load with a ModelLoadError naming the reason, and a server given one exits with code 2
and one line saying why.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from architectures import CASES, build_tiny_model, minilm_tokenizer
from conftest import InProcessServer
from introspect_client import Client, targets

TOLERANCE = 1e-4
LONG = [101, 2023, 2003, 1037, 3231, 1997, 1996, 2944, 102]
SHORT = [101, 7592, 2088, 999, 102]

REFUSED = {
    "albert": "parameter sharing",
    "deberta-v2": "attention interface",
    "deberta": "attention interface",
    "mpnet": "attention interface",
    "roformer": "attention interface",
    "megatron-bert": "attention interface",
    "gpt_neo": "attention interface",
    "xglm": "attention interface",
    "falcon": "attention interface",
    "bloom": "attention interface",
    "mpt": "attention interface",
    "t5": "encoder-decoder",
    "t5-encoder": "the weights lack",
    "bart": "encoder-decoder",
    "whisper": "encoder-decoder",
    "vit": "no preprocessor_config.json",  # served with its image processor (tests/test_vision.py)
}
SERVED = [case.model_type for case in CASES if case.model_type not in REFUSED]


def test_the_catalogue_covers_at_least_25_served_architectures() -> None:
    assert len(SERVED) >= 25 and len(CASES) >= 40


@pytest.fixture(scope="module")
def architecture_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """model_type -> directory of its tiny random-weight model."""
    root = tmp_path_factory.mktemp("architectures")
    tokenizer = minilm_tokenizer()
    return {case.model_type: build_tiny_model(case, root, tokenizer) for case in CASES}


@pytest.mark.parametrize("model_type", sorted(REFUSED))
def test_unservable_architectures_are_refused_at_load_naming_why(
    architecture_dirs: dict[str, Path], model_type: str
) -> None:
    from introspect.config import ModelSpec
    from introspect.models import ModelLoadError, load_model

    with pytest.raises(ModelLoadError) as refused:
        load_model(ModelSpec(model_type, architecture_dirs[model_type]), torch.device("cpu"), "float32")
    message = str(refused.value)
    assert REFUSED[model_type] in message and repr(model_type) in message, message


def test_a_server_given_an_unservable_model_exits_2_with_one_line(architecture_dirs: dict[str, Path]) -> None:
    path = architecture_dirs["bart"]
    finished = subprocess.run(
        [sys.executable, "-m", "introspect", "--port", "0", f"--model=bart={path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert finished.returncode == 2
    errors = [line for line in finished.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "'bart'" in errors[0] and str(path) in errors[0] and "encoder-decoder" in errors[0]
    assert "Traceback" not in finished.stderr


@pytest.fixture(scope="module")
def architecture_server(architecture_dirs: dict[str, Path]) -> Iterator[InProcessServer]:
    """One (in-process) server serving every architecture that is not refused."""
    running = InProcessServer("--cache-bytes=0", *[f"--model={name}={architecture_dirs[name]}" for name in SERVED])
    yield running
    assert running.stop() == 0


class Eager:
    """The reference: the same weights, plain transformers, eager attention, float32."""

    def __init__(self, path: Path) -> None:
        from introspect.kinds import kind_of
        from transformers import AutoConfig

        self.kind = kind_of(AutoConfig.from_pretrained(path))
        self.model = self.kind.loader.from_pretrained(path, attn_implementation="eager").eval()

    def output(self, **inputs: torch.Tensor) -> torch.Tensor:
        extra = {"use_cache": False} if self.kind.causal else {}
        output = self.model(**inputs, **extra)
        return output.last_hidden_state if self.kind.name == "encoder" else output.logits

    def score(self, output: torch.Tensor) -> torch.Tensor:
        """The default target of each kind: log p(predicted next token), the norm of the
        mean-pooled embedding, the predicted class's logit."""
        if self.kind.causal:
            log_probabilities = torch.log_softmax(output[0, -1].float(), dim=-1)
            return log_probabilities[int(log_probabilities.argmax())]
        if self.kind.name == "encoder":
            return output[0].mean(dim=0).norm()
        return output[0, int(output[0].argmax())]

    @property
    def target(self):  # type: ignore[no-untyped-def]
        if self.kind.causal:
            return targets.next_token()
        return targets.embedding_norm() if self.kind.name == "encoder" else targets.class_score()


@pytest.mark.parametrize("model_type", SERVED)
def test_served_architectures_equal_eager_attention(
    architecture_server: InProcessServer, architecture_dirs: dict[str, Path], model_type: str
) -> None:
    eager = Eager(architecture_dirs[model_type])
    with Client(architecture_server.address) as client:
        maps = client.attention([LONG, SHORT], model=model_type)
        gradient = client.saliency(LONG, model=model_type, method="gradient", target=eager.target)
        ablation = client.ablate(LONG, model=model_type, target=eager.target, heads=[(0, 0)])

    ids = torch.tensor([LONG, SHORT[:] + [0] * (len(LONG) - len(SHORT))])
    mask = torch.tensor([[1] * len(LONG), [1] * len(SHORT) + [0] * (len(LONG) - len(SHORT))])
    with torch.no_grad():
        attentions = eager.model(input_ids=ids, attention_mask=mask, output_attentions=True,
                                 **({"use_cache": False} if eager.kind.causal else {})).attentions
    for row, length in enumerate((len(LONG), len(SHORT))):
        assert maps[row].token_ids == [LONG, SHORT][row]
        assert sorted(maps[row].layers) == list(range(len(attentions)))
        for layer, reference in enumerate(attentions):
            expected = reference[row, :, :length, :length].numpy()
            assert maps[row].layers[layer].shape == expected.shape
            assert abs(maps[row].layers[layer] - expected).max() <= TOLERANCE, (layer, row)

    embeddings = eager.model.get_input_embeddings()(torch.tensor([LONG])).detach().requires_grad_(True)
    score = eager.score(eager.output(inputs_embeds=embeddings, attention_mask=torch.ones(1, len(LONG), dtype=torch.long)))
    (gradients,) = torch.autograd.grad(score, embeddings)
    scale = max(1.0, abs(float(score.detach())))
    assert abs(gradient.target_score - float(score.detach())) <= TOLERANCE * scale
    assert abs(ablation.baseline_score - float(score.detach())) <= TOLERANCE * scale
    norms = gradients[0].norm(dim=-1).numpy()
    assert abs(gradient.scores - norms).max() <= TOLERANCE * max(1.0, float(norms.max()))
