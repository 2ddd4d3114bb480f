"""Settings: one typed object built at start-up from flags, environment and a config file.

Precedence: command-line flag > environment variable (INTROSPECT_<NAME>) > config file
(TOML, `--config`) > default. Nothing reads the environment after start-up.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_MODEL_NAME = "minilm"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """A model to serve: the name callers use and a local Hugging Face directory."""

    name: str
    path: Path


@dataclass(frozen=True)
class Settings:
    """Everything the server is configured with."""

    host: str = "127.0.0.1"
    port: int = 50051
    models: tuple[ModelSpec, ...] = ()
    device: str = "auto"
    dtype: str = "auto"
    max_message_bytes: int = 4 * MIB
    max_queue: int = 32
    max_inputs: int = 64
    max_text_bytes: int = 128 * 1024
    max_request_text_bytes: int = 1 * MIB
    max_batch_tokens: int = 65536
    max_batch_size: int = 8  # calls merged into one forward (dynamic batching; 1: off)
    max_batch_delay_ms: float = 2.0  # how long a batch waits for more calls (0: off)
    max_image_pixels: int = 40_000_000  # width x height of one image as sent (images.DEFAULT_MAX_IMAGE_PIXELS)
    max_request_bytes: int = 0  # 0: a share of the device's memory (budget.default_request_bytes)
    stall_timeout_seconds: float = 10.0
    grace_seconds: float = 10.0
    max_connection_age_seconds: float = 0.0
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_tls: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    health_port: int = 0
    redis_url: str = ""
    cache_bytes: int = 256 * MIB
    cache_ttl_seconds: int = 3600
    cache_max_value_bytes: int = 64 * MIB
    cache_prefix: str = "introspect:"
    cache_secret_file: str = ""
    redis_password_file: str = ""
    log_level: str = "INFO"
    auth_tokens_file: str = ""
    auth_health: bool = False
    caller_max_concurrency: int = 0
    caller_rate_per_second: float = 0.0
    caller_burst: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def default_model(self) -> str:
        """The model an empty `model` field selects: the first configured one."""
        return self.models[0].name if self.models else DEFAULT_MODEL_NAME


_DTYPES = ("auto", "float32", "float16", "bfloat16")


def parse_model_spec(text: str) -> ModelSpec:
    """Parses NAME=PATH into a ModelSpec."""
    name, separator, path = text.partition("=")
    if not separator or not name.strip() or not path.strip():
        raise ValueError(f"model must be NAME=PATH, got {text!r}")
    return ModelSpec(name=name.strip(), path=Path(path.strip()).expanduser())


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the `serve` flags; every default is None so unset flags fall through."""
    parser.add_argument("--config", type=Path, help="TOML config file (keys as the flags, with _)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    parser.add_argument(
        "--model",
        dest="models",
        action="append",
        metavar="NAME=PATH",
        help="serve the local Hugging Face directory PATH as NAME (repeatable; "
        "default: the packaged all-MiniLM-L6-v2 as 'minilm')",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--dtype", choices=_DTYPES, help="weight dtype (auto: float32 on cpu, model's on cuda)")
    parser.add_argument("--max-message-bytes", type=int, help="largest gRPC message (default 4 MiB)")
    parser.add_argument("--max-queue", type=int, help="requests waiting per device before RESOURCE_EXHAUSTED")
    parser.add_argument("--max-inputs", type=int, help="inputs in one request, mean references included (default 64)")
    parser.add_argument("--max-text-bytes", type=int, help="UTF-8 bytes of one input's text (default 128 KiB)")
    parser.add_argument("--max-request-text-bytes", type=int, help="UTF-8 bytes of all texts of a request (default 1 MiB)")
    parser.add_argument("--max-image-pixels", type=int,
                        help="width x height of one image, checked from its header before decoding (default 40000000)")
    parser.add_argument("--max-batch-tokens", type=int, help="inputs x longest input in tokens, per batch (default 65536)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="concurrent compatible calls merged into one padded forward (dynamic batching; default 8, 1: off)",
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        help="how long a batch waits for more calls while others are in progress (default 2; 0: off)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        help="memory one request may use (default 0: half the free accelerator memory, a quarter of RAM on CPU)",
    )
    parser.add_argument(
        "--stall-timeout-seconds",
        type=float,
        help="stop a call whose reader takes no message for this long (RESOURCE_EXHAUSTED; default 10)",
    )
    parser.add_argument("--grace-seconds", type=float, help="graceful stop window on SIGTERM")
    parser.add_argument(
        "--max-connection-age-seconds",
        type=float,
        help="close client connections after this long so they re-resolve (0: never)",
    )
    parser.add_argument("--metrics-port", type=int, help="Prometheus metrics HTTP port (0: off)")
    parser.add_argument("--metrics-host", help="address of the metrics endpoint (default 127.0.0.1)")
    parser.add_argument(
        "--metrics-tls",
        action="store_true",
        default=None,
        help="serve metrics over HTTPS with --tls-cert/--tls-key (and, with --tls-client-ca, client certificates)",
    )
    parser.add_argument("--tls-cert", help="PEM certificate chain: serve gRPC over TLS (re-read when it changes)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert (re-read when it changes)")
    parser.add_argument("--tls-client-ca", help="PEM CA certificates: require client certificates (mutual TLS)")
    parser.add_argument(
        "--health-port",
        type=int,
        help="plaintext port on --host serving only grpc.health.v1.Health, for kubelet probes (0: off)",
    )
    parser.add_argument("--redis-url", help="redis://host:port/db for the shared result cache")
    parser.add_argument("--cache-bytes", type=int, help="in-process result cache budget in bytes (0: off)")
    parser.add_argument("--cache-ttl-seconds", type=int, help="time to live of cached results")
    parser.add_argument("--cache-max-value-bytes", type=int, help="larger results are not cached")
    parser.add_argument("--cache-prefix", help="Redis key prefix")
    parser.add_argument(
        "--cache-secret-file",
        help="file with the secret that tags cached values (line 1: current, optional line 2: previous); "
        "required with --redis-url",
    )
    parser.add_argument("--redis-password-file", help="file with the Redis password (instead of one in --redis-url)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--auth-tokens-file",
        help="TOML file of callers and their token hashes: the service then needs authorization: Bearer <token> "
        "(default: none, every call is the caller 'anonymous')",
    )
    parser.add_argument(
        "--auth-health",
        action="store_const",
        const=True,
        help="health and reflection need a token too (default: they stay open)",
    )
    parser.add_argument(
        "--caller-max-concurrency", type=int, help="calls in flight per caller unless its tokens entry says (0: unlimited)"
    )
    parser.add_argument(
        "--caller-rate-per-second", type=float, help="calls per second per caller unless its tokens entry says (0: unlimited)"
    )
    parser.add_argument("--caller-burst", type=int, help="token bucket size per caller (0: the rate, rounded up)")


def _coerce(name: str, value: Any) -> Any:
    if name == "models":
        if isinstance(value, str):
            value = [item for item in value.split(",") if item.strip()]
        if isinstance(value, Mapping):
            return tuple(ModelSpec(str(k), Path(str(v)).expanduser()) for k, v in value.items())
        return tuple(item if isinstance(item, ModelSpec) else parse_model_spec(str(item)) for item in value)
    default = getattr(Settings(), name)
    if isinstance(default, bool):
        return str(value).lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return str(value)


def build_settings(
    flags: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Builds Settings from parsed flags (None = unset), the environment and --config."""
    environ = os.environ if environ is None else environ
    names = [f.name for f in fields(Settings) if f.name != "extra"]
    values: dict[str, Any] = {}
    config_path = flags.get("config") or environ.get("INTROSPECT_CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            from_file = tomllib.load(handle)
        unknown = set(from_file) - set(names)
        if unknown:
            raise ValueError(f"unknown keys in {config_path}: {sorted(unknown)}")
        values.update(from_file)
    for name in names:
        env_value = environ.get(f"INTROSPECT_{name.upper()}")
        if env_value is not None and env_value != "":
            values[name] = env_value
    for name in names:
        if flags.get(name) is not None:
            values[name] = flags[name]
    settings = Settings(**{name: _coerce(name, value) for name, value in values.items()})
    if settings.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {settings.dtype!r}")
    if settings.stall_timeout_seconds <= 0:
        raise ValueError("stall_timeout_seconds must be > 0")
    if settings.max_message_bytes < 64 * 1024:
        raise ValueError("max_message_bytes must be at least 65536")
    for name in ("max_inputs", "max_text_bytes", "max_request_text_bytes", "max_batch_tokens", "max_image_pixels"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1")
    for name in ("caller_max_concurrency", "caller_rate_per_second", "caller_burst"):
        if getattr(settings, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0: unlimited)")
    if settings.max_batch_size < 1:
        raise ValueError("max_batch_size must be at least 1 (1: no batching)")
    if not 0 <= settings.max_batch_delay_ms <= 1000:
        raise ValueError("max_batch_delay_ms must be in [0, 1000] (0: no batching)")
    if settings.max_request_bytes < 0:
        raise ValueError("max_request_bytes must be >= 0 (0: automatic)")
    _check_tls(settings)
    names_seen = [spec.name for spec in settings.models]
    if len(set(names_seen)) != len(names_seen):
        raise ValueError(f"model names must be unique, got {names_seen}")
    return settings


def _check_tls(settings: Settings) -> None:
    """The TLS settings come as a set: a key with its certificate, and nothing that
    needs them without them."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ValueError("tls_cert and tls_key go together: set both or neither")
    if not settings.tls_cert:
        for name in ("tls_client_ca", "metrics_tls"):
            if getattr(settings, name):
                raise ValueError(f"{name} needs tls_cert and tls_key")
    if settings.health_port < 0:
        raise ValueError("health_port must be >= 0 (0: off)")
    if settings.health_port and settings.health_port == settings.port:
        raise ValueError("health_port must differ from port")


def version_line() -> str:
    """What `introspect serve --version` prints: the server's version and the contract's."""
    from introspect_contract import CONTRACT_VERSION

    from . import __version__

    return f"introspect {__version__} (contract introspect.v1 {CONTRACT_VERSION})"


def parse_serve_arguments(argv: Sequence[str] | None = None) -> Settings:
    """Parses `introspect serve` arguments into Settings."""
    parser = argparse.ArgumentParser(prog="introspect serve")
    parser.add_argument("--version", action="version", version=version_line())
    add_serve_arguments(parser)
    return build_settings(vars(parser.parse_args(argv)))
