"""Settings precedence, the generated code's freshness, the contract's buf checks and the
server's import boundary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from introspect.config import ModelSpec, build_settings, parse_serve_arguments

ROOT = Path(__file__).resolve().parent.parent


def test_flags_override_environment_override_file(tmp_path: Path) -> None:
    config = tmp_path / "introspect.toml"
    config.write_text('port = 7000\ndevice = "cpu"\nmax_queue = 3\nmodels = ["a=/models/a"]\n')
    environment = {"INTROSPECT_PORT": "7001", "INTROSPECT_MAX_QUEUE": "5", "INTROSPECT_DTYPE": "float16"}
    settings = build_settings({"config": config, "port": 7002}, environment)
    assert settings.port == 7002  # flag
    assert settings.max_queue == 5  # environment over file
    assert settings.dtype == "float16"  # environment
    assert settings.device == "cpu"  # file
    assert settings.models == (ModelSpec("a", Path("/models/a")),)
    assert settings.default_model == "a"
    assert settings.host == "127.0.0.1"  # nothing listens beyond loopback unless configured


def test_serve_arguments_parse_repeatable_models() -> None:
    settings = parse_serve_arguments(["--model", "x=/m/x", "--model=y=/m/y", "--max-message-bytes", "70000"])
    assert [spec.name for spec in settings.models] == ["x", "y"]
    assert settings.max_message_bytes == 70000


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"models": ["broken"]}, "NAME=PATH"),
        ({"models": ["a=/x", "a=/y"]}, "unique"),
        ({"max_message_bytes": 1000}, "at least"),
        ({"dtype": "int8"}, "dtype"),
        ({"max_batch_size": 0}, "max_batch_size must be at least 1"),
        ({"max_batch_delay_ms": -1}, "max_batch_delay_ms must be in"),
        ({"max_batch_delay_ms": 5000}, "max_batch_delay_ms must be in"),
    ],
)
def test_bad_settings_are_rejected(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_settings(flags, {})


def test_unknown_config_keys_are_rejected(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        build_settings({"config": config}, {})


def test_generated_code_is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_contract_passes_buf_lint_and_breaking() -> None:
    """buf format (no diff), buf lint, and buf breaking against the released contract
    (and the latest v* tag).
    Never skipped: a missing buf fails here (scripts/test.sh installs it with npm ci)."""
    script = ROOT / "scripts" / "check_contract.sh"
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (
        f"{script.name} failed ({result.returncode}); buf missing? run 'npm ci --no-audit --no-fund'\n"
        + result.stdout
        + result.stderr
    )
    assert "buf format: ok" in result.stdout
    assert "buf lint: ok" in result.stdout
    assert "buf breaking against protos/released/" in result.stdout


def test_server_never_imports_the_client_package() -> None:
    """Every module of the server package (but __main__, which serves) imports with
    introspect_client blocked."""
    code = (
        "import importlib.abc, pkgutil, sys\n"
        "class Blocker(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'introspect_client' or name.startswith('introspect_client.'):\n"
        "            raise ImportError(f'the server imported {name}')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "import introspect\n"
        "modules = pkgutil.walk_packages(introspect.__path__, 'introspect.')\n"
        "names = [m.name for m in modules if m.name != 'introspect.__main__']\n"
        "for name in names:\n"
        "    __import__(name)\n"
        "print(len(names))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 20


def test_a_model_directory_without_safetensors_is_refused(tmp_path: Path) -> None:
    from introspect.models import ModelLoadError, load_model

    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    import torch

    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(ModelSpec("unsafe", tmp_path), torch.device("cpu"), "auto")


def test_tensor_codec_round_trips_uint8_pixels() -> None:
    """Raw image pixels (ImageInput.pixels) travel as DTYPE_UINT8."""
    import numpy as np
    from introspect_contract import pb
    from introspect_contract.tensors import decode_tensor, encode_tensor

    pixels = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    tensor = encode_tensor(pixels, "uint8")
    assert tensor.dtype == pb.DTYPE_UINT8 and len(tensor.data) == pixels.size
    decoded = decode_tensor(tensor)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, pixels)
    image = pb.Input(image=pb.ImageInput(pixels=tensor))
    assert image.WhichOneof("source") == "image"


def test_enum_names_come_from_the_descriptors() -> None:
    from introspect_contract import pb
    from introspect_contract.enums import ATTENTION_VIEW, CACHE_POLICY, DTYPE, TARGET_KINDS

    assert ATTENTION_VIEW.names == ("heads", "head_mean", "head_max", "rollout", "mean_distance")
    assert ATTENTION_VIEW.number("head_mean") == pb.ATTENTION_VIEW_HEAD_MEAN
    assert ATTENTION_VIEW.name_of(pb.ATTENTION_VIEW_ROLLOUT) == "rollout"
    assert ATTENTION_VIEW.name_of(pb.ATTENTION_VIEW_UNSPECIFIED) is None
    assert CACHE_POLICY.names == ("bypass", "refresh") and DTYPE.number("uint8") == pb.DTYPE_UINT8
    assert TARGET_KINDS[0] == "next_token"
    with pytest.raises(ValueError, match="head_mean"):
        ATTENTION_VIEW.number("mean")


def test_every_registered_method_names_an_rpc_of_the_contract() -> None:
    """The servicer builds each streaming RPC from the registry, and every streaming RPC
    of the contract has a method."""
    from introspect.methods import METHODS
    from introspect.rpc.servicer import SERVICE, IntrospectionServicer
    from introspect_contract import pb_grpc

    for method in METHODS:
        assert method.rpc in SERVICE.methods_by_name
        assert getattr(IntrospectionServicer, method.rpc) is not getattr(pb_grpc.IntrospectionServicer, method.rpc)
    streaming = {method.name for method in SERVICE.methods if method.server_streaming}
    assert {method.rpc for method in METHODS} == streaming
