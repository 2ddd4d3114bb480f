"""TLS for the server's listeners: the certificate, key and client CA files, checked at
start-up and re-read when they change (cert-manager rotates them in place).

`TlsFiles.load` checks the files and fails with TlsFileError naming the file at fault.
`ReloadingTls` keeps the files' current, valid contents: gRPC asks it on every new
connection (`grpc_credentials`), the metrics endpoint on every accept (`context`). New
contents that do not form a valid pair (a rotation half written) are kept out, with a
warning, until they do; connections already open keep the certificate they began with.
"""

from __future__ import annotations

import logging
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsFileError(ValueError):
    """A TLS file cannot be read or holds no valid certificate or key; the message names it."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the server's certificate chain, its private key and (for mutual TLS) the CA
    that client certificates must chain to are."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def read(self) -> TlsMaterial:
        """The files' contents, checked: PEM certificates, a key matching the certificate."""
        return TlsMaterial.parse(self)

    def raw(self) -> tuple[bytes, bytes, bytes | None]:
        """The files' bytes, unchecked: certificate, key, client CA."""
        client_ca = _read(self.client_ca, "TLS client CA") if self.client_ca else None
        return _read(self.cert, "TLS certificate"), _read(self.key, "TLS key"), client_ca


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFileError(f"cannot read the {what} file {path}: {error.strerror or error}") from None


def _certificates(path: Path, text: bytes, what: str) -> None:
    """Raises TlsFileError unless `text` holds PEM certificates (and nothing unparsable)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text.decode("ascii"))
    except (UnicodeDecodeError, ssl.SSLError, ValueError):
        raise TlsFileError(f"the {what} file {path} holds no valid PEM certificate") from None


def _no_password() -> bytes:
    raise TlsFileError("encrypted")


@dataclass(frozen=True)
class TlsMaterial:
    """The contents of the TLS files, checked, and a server-side SSL context made of them."""

    cert: bytes
    key: bytes
    client_ca: bytes | None
    context: ssl.SSLContext

    @classmethod
    def parse(cls, files: TlsFiles) -> TlsMaterial:
        """Reads and checks `files`; raises TlsFileError naming the file at fault."""
        cert, key, client_ca = files.raw()
        _certificates(files.cert, cert, "TLS certificate")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            # From the paths (ssl reads no key from memory); a caller that must know the
            # files did not change meanwhile reads them again (ReloadingTls does).
            context.load_cert_chain(files.cert, files.key, password=_no_password)
        except (ssl.SSLError, TlsFileError, OSError):
            raise TlsFileError(
                f"the TLS key file {files.key} holds no unencrypted PEM private key matching the certificate "
                f"in {files.cert}"
            ) from None
        if files.client_ca is not None and client_ca is not None:
            _certificates(files.client_ca, client_ca, "TLS client CA")
            context.load_verify_locations(cadata=client_ca.decode("ascii"))
            context.verify_mode = ssl.CERT_REQUIRED
        return cls(cert=cert, key=key, client_ca=client_ca, context=context)

    def raw(self) -> tuple[bytes, bytes, bytes | None]:
        """The files' bytes: certificate, key, client CA."""
        return self.cert, self.key, self.client_ca

    def grpc_configuration(self) -> grpc.ServerCertificateConfiguration:
        """The certificate configuration gRPC serves."""
        return grpc.ssl_server_certificate_configuration([(self.key, self.cert)], root_certificates=self.client_ca)


class ReloadingTls:
    """The current TLS material of `files`, re-read whenever a new connection comes."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._current = files.read()
        self._lock = threading.Lock()
        self._rejected: str | None = None

    @property
    def mutual(self) -> bool:
        """Whether client certificates are required."""
        return self.files.client_ca is not None

    def refresh(self) -> TlsMaterial | None:
        """Re-reads the files; returns the new material when they changed to a valid
        set, else None (the current material stays)."""
        with self._lock:
            try:
                if self.files.raw() == self._current.raw():
                    return None
                material = self.files.read()
                if material.raw() != self.files.raw():
                    return None  # written to while being read: the next connection looks again
            except TlsFileError as error:
                if str(error) != self._rejected:
                    log.warning("keeping the current TLS certificate: %s", error)
                    self._rejected = str(error)
                return None
            self._rejected = None
            self._current = material
            log.info("TLS certificate reloaded from %s", self.files.cert)
            return material

    def context(self) -> ssl.SSLContext:
        """The server-side SSL context of the current files (re-read first)."""
        self.refresh()
        return self._current.context

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        material = self.refresh()
        return material.grpc_configuration() if material is not None else None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up changed files at each new connection."""
        return grpc.dynamic_ssl_server_credentials(
            self._current.grpc_configuration(), self._fetch, require_client_authentication=self.mutual
        )
