"""How the `introspect` client commands reach the server: --server, TLS (--tls-ca,
--tls-cert, --tls-key) and a bearer token (--token or --token-file), each with an
INTROSPECT_* environment variable as its default. The token is never printed: not in
--help, not in error messages."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import grpc

from .client import Client

DEFAULT_SERVER = "127.0.0.1:50051"
SERVER_ENV = "INTROSPECT_SERVER"
TLS_CA_ENV = "INTROSPECT_TLS_CA"
TLS_CERT_ENV = "INTROSPECT_TLS_CERT"
TLS_KEY_ENV = "INTROSPECT_TLS_KEY"
TOKEN_ENV = "INTROSPECT_TOKEN"
TOKEN_FILE_ENV = "INTROSPECT_TOKEN_FILE"


def add_connection_arguments(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], *, defaults: bool = True
) -> None:
    """--server, --tls-ca, --tls-cert, --tls-key, --token and --token-file, their
    defaults taken from `environ`.

    The command line takes them before the subcommand (on the main parser, with the
    defaults) and after it (on each subcommand, `defaults=False`: a flag given there
    overrides the main parser's value, one not given leaves it as it is)."""

    def default(value: str | None) -> str | None:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--server",
        default=default(environ.get(SERVER_ENV) or DEFAULT_SERVER),
        metavar="TARGET",
        help=f"server address: HOST:PORT, dns:///NAME:PORT or ipv4:A:P,B:P "
             f"(default: ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    tls = parser.add_argument_group("TLS (any of these turns TLS on)")
    tls.add_argument("--tls-ca", default=default(environ.get(TLS_CA_ENV) or None), metavar="FILE",
                     help=f"PEM CA bundle that signed the server's certificate (default: ${TLS_CA_ENV}; "
                          "unset with --tls-cert: the system's roots)")
    tls.add_argument("--tls-cert", default=default(environ.get(TLS_CERT_ENV) or None), metavar="FILE",
                     help=f"PEM client certificate for mutual TLS (default: ${TLS_CERT_ENV}); needs --tls-key")
    tls.add_argument("--tls-key", default=default(environ.get(TLS_KEY_ENV) or None), metavar="FILE",
                     help=f"PEM private key of --tls-cert (default: ${TLS_KEY_ENV})")
    auth = parser.add_argument_group("authentication").add_mutually_exclusive_group()
    auth.add_argument("--token", default=default(None), metavar="TOKEN",
                      help=f"bearer token sent with every call (default: ${TOKEN_ENV}); "
                           "--token-file keeps it out of the process list")
    auth.add_argument("--token-file", default=default(None), metavar="FILE",
                      help=f"file holding the bearer token (default: ${TOKEN_FILE_ENV})")
    if defaults:
        parser.set_defaults(token_env=environ.get(TOKEN_ENV) or None, token_file_env=environ.get(TOKEN_FILE_ENV) or None)


def _read(path: str, what: str) -> bytes:
    """The bytes of a file a flag names; ValueError naming the flag when unreadable."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror}") from None


def credentials_of(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from --tls-ca/--tls-cert/--tls-key; None when none is set."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(args.tls_ca, "--tls-ca") if args.tls_ca else None,
        private_key=_read(args.tls_key, "--tls-key") if args.tls_key else None,
        certificate_chain=_read(args.tls_cert, "--tls-cert") if args.tls_cert else None,
    )


def token_of(args: argparse.Namespace) -> str | None:
    """The bearer token: --token, else --token-file's first line, else the environment's
    (INTROSPECT_TOKEN, then INTROSPECT_TOKEN_FILE); None without one."""
    if args.token:
        return str(args.token)
    path = args.token_file or (None if args.token_env else args.token_file_env)
    if path:
        token = _read(path, "--token-file").decode("utf-8", errors="replace").strip()
        if not token:
            raise ValueError(f"--token-file {path} is empty")
        return token
    return args.token_env  # type: ignore[no-any-return]


def client_of(args: argparse.Namespace) -> Client:
    """A client of --server with the TLS and token flags applied."""
    return Client(args.server, credentials=credentials_of(args), token=token_of(args))
