"""Who may reach a server, and how: the listening address, TLS, the API key.

Secure by default: tritonserver listens on 127.0.0.1 only, model loading and the protocols
no caller needs (shared memory, trace and log settings) are closed to callers (an internal
key, known to the launcher alone, guards them), and an API key, when one is given, guards
every other protocol but health.

Only gRPC has TLS: HTTP and metrics are plaintext, and listen on loopback unless they are
exposed by name (``http_host``, ``metrics_host``). Exposing any endpoint beyond loopback
needs an API key or client certificates (mutual TLS; gRPC only), or ``insecure``.

Triton takes restricted-protocol keys on its command line, so local users of the machine can
read them with ``ps``; the key never appears in vlpserve's logs or error messages.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpserve.errors import ConfigError

API_KEY_ENV = "VLPSERVE_API_KEY"
# Triton's header for restricted protocols: it prefixes the header name on gRPC.
AUTH_HEADER = "authorization"
GRPC_AUTH_METADATA = "triton-grpc-protocol-authorization"
# Every protocol a caller uses, but health: probes (Kubernetes, load balancers) stay open.
GUARDED = ("inference", "metadata", "model-config", "statistics")
# The launcher's own: loading and unloading models, and what vlpserve's clients never use:
# shared memory (system and CUDA: the Python backend's region-name CVEs, 2025-23319/23320/
# 23334, go through it), trace and log settings.
ADMIN = ("model-repository", "shared-memory", "trace", "logging")
LOOPBACK = "127.0.0.1"


def api_key_from(path: Path | None, environ: dict[str, str] | None = None) -> str | None:
    """The API key in ``path`` (its first line), else ``$VLPSERVE_API_KEY``, else None."""
    if path is not None:
        try:
            key = Path(path).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc.strerror}") from exc
        if not key:
            raise ConfigError(f"the API key file {path} is empty")
        return key
    key = (os.environ if environ is None else environ).get(API_KEY_ENV, "").strip()
    return key or None


def bearer(key: str) -> str:
    return f"Bearer {key}"


@dataclass(frozen=True, kw_only=True)
class Security:
    """How tritonserver is exposed.

    Attributes:
        host: address gRPC listens on (``0.0.0.0``: every interface).
        http_host, metrics_host: addresses HTTP and metrics listen on (plaintext, both;
            loopback unless exposed by name).
        tls_cert, tls_key: PEM files: gRPC over TLS with this identity.
        tls_ca: PEM bundle: callers must present a certificate it signed (mutual TLS).
        api_key: callers must send it (gRPC metadata ``triton-grpc-protocol-authorization:
            Bearer <key>``, HTTP header ``authorization: Bearer <key>``) for every protocol
            but health.
        http: serve the HTTP endpoint (it has no TLS; keep it on loopback, or off).
        insecure: allow an endpoint beyond loopback with neither an API key nor client
            certificates.
    """

    host: str = LOOPBACK
    http_host: str = LOOPBACK
    metrics_host: str = LOOPBACK
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    api_key: str | None = field(default=None, repr=False)
    http: bool = True
    insecure: bool = False
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("TLS needs both --tls-cert and --tls-key")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-ca (client certificates) needs --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key, self.tls_ca):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"{path} does not exist")
        key = self.api_key
        if key is not None and (not key or any(c.isspace() for c in key)):
            raise ConfigError("the API key must be one word, without spaces")
        if problem := self.exposure_problem():
            raise ConfigError(problem)

    def exposure_problem(self) -> str | None:
        """Why these addresses open the server to anyone who reaches them (None: they
        do not). gRPC is guarded by an API key or client certificates; HTTP only by the
        key (it has no TLS); metrics by neither, so they may leave loopback only on a
        server that guards its calls."""
        if self.insecure:
            return None
        mutual = self.tls_ca is not None
        open_endpoints = []
        if not is_loopback(self.host) and not (self.api_key or mutual):
            open_endpoints.append(f"gRPC on {self.host}")
        if self.http and not is_loopback(self.http_host) and not self.api_key:
            open_endpoints.append(f"HTTP on {self.http_host}")
        if not is_loopback(self.metrics_host) and not (self.api_key or mutual):
            open_endpoints.append(f"metrics on {self.metrics_host}")
        if not open_endpoints:
            return None
        return (
            f"{' and '.join(open_endpoints)} would answer anyone who reaches them: add "
            "--api-key-file (or $VLPSERVE_API_KEY), or for gRPC client certificates "
            "(--tls-cert, --tls-key and --tls-ca; HTTP has no TLS and takes only the key), "
            "or keep them on 127.0.0.1; --insecure exposes them unauthenticated"
        )

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def dial_host(self) -> str:
        """The address this machine's own clients dial for gRPC (the launcher's checks)."""
        return dial(self.host)

    def arguments(self) -> list[str]:
        """tritonserver options for addresses, TLS and keys."""
        args = [f"--grpc-address={self.host}", f"--metrics-address={self.metrics_host}"]
        args += [f"--http-address={self.http_host}"] if self.http else ["--allow-http=false"]
        if self.tls:
            args += ["--grpc-use-ssl=true", f"--grpc-server-cert={self.tls_cert}"]
            args += [f"--grpc-server-key={self.tls_key}"]
            if self.tls_ca is not None:
                args += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={self.tls_ca}"]
        groups = [(",".join(ADMIN), self.admin_key)]
        if self.api_key:
            groups.append((",".join(GUARDED), self.api_key))
        for protocols, key in groups:
            args.append(f"--grpc-restricted-protocol={protocols}:{AUTH_HEADER}={bearer(key)}")
            if self.http:
                args.append(f"--http-restricted-api={protocols}:{AUTH_HEADER}={bearer(key)}")
        return args

    def channel_credentials(self) -> Any:
        """gRPC credentials for the launcher's own calls (None: plaintext). The server's
        certificate must name the address dialled; with mutual TLS the launcher presents
        the server's own identity."""
        if not self.tls:
            return None
        import grpc

        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        root = read(self.tls_ca) or read(self.tls_cert)
        identity = (read(self.tls_key), read(self.tls_cert)) if self.tls_ca else (None, None)
        return grpc.ssl_channel_credentials(root, *identity)

    def metadata(self, *, admin: bool = False) -> tuple[tuple[str, str], ...]:
        """gRPC metadata that opens a guarded protocol (``admin``: model loading)."""
        key = self.admin_key if admin else self.api_key
        return ((GRPC_AUTH_METADATA, bearer(key)),) if key else ()

    def redact(self, text: str) -> str:
        """``text`` with every key replaced by ``***`` (log tails shown to users)."""
        for key in (self.api_key, self.admin_key):
            if key:
                text = text.replace(key, "***")
        return text


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``localhost``, 127.0.0.0/8, ``::1``); any
    other name counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dial(host: str) -> str:
    """The address this machine's own clients dial for a server listening on ``host``."""
    return LOOPBACK if host in ("0.0.0.0", "", "::") else host
