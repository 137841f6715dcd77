"""What both clients keep: the address, the options, the models of the family, the configs
already fetched, and the RPC each operation is."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tritonclient.grpc import service_pb2 as pb

from vlpserve.client.calls import ClientOptions, GetConfig, Infer, IsReady, Op
from vlpserve.client.replicas import Replica, Replicas, targets_of
from vlpserve.client.wire import CHANNEL_OPTIONS, config_dict, rpc_error
from vlpserve.contract import EmbeddingModels, Family
from vlpserve.errors import DeadlineExceeded, Overloaded, ServerUnavailable

logger = logging.getLogger(__name__)


class ClientBase:
    """Options and state of ``Client`` and ``AsyncClient``; the arguments are ``Client``'s."""

    def __init__(
        self,
        url: str | Sequence[str] = "localhost:8001",
        *,
        family: Family | str = Family.CLIP,
        timeout_s: float = 30.0,
        retries: int = 3,
        retry_backoff_s: float = 0.1,
        max_concurrency: int = 8,
        tls: bool = False,
        tls_ca: str | Path | None = None,
        tls_cert: str | Path | None = None,
        tls_key: str | Path | None = None,
        api_key: str | None = None,
    ) -> None:
        self.url = url if isinstance(url, str) else ",".join(url)
        self.replicas = Replicas(*targets_of(url))
        self.options = ClientOptions(
            family=Family(family),
            timeout_s=timeout_s,
            retries=retries,
            retry_backoff_s=retry_backoff_s,
            max_concurrency=max_concurrency,
            tls=tls,
            tls_ca=Path(tls_ca) if tls_ca is not None else None,
            tls_cert=Path(tls_cert) if tls_cert is not None else None,
            tls_key=Path(tls_key) if tls_key is not None else None,
            api_key=api_key,
        )
        self.models: EmbeddingModels = self.options.models
        self._configs: dict[str, dict[str, Any]] = {}
        self._metadata = self.options.metadata
        self._credentials = self.options.credentials()

    @property
    def family(self) -> str:
        return self.models.family.value

    @property
    def timeout_s(self) -> float:
        return self.options.timeout_s

    def _remaining(self, op: Op, deadline: float, now: float) -> float:
        """Seconds left for another attempt, or DeadlineExceeded."""
        if deadline <= now:
            raise DeadlineExceeded(f"{op.what}: no answer within {self.options.timeout_s} s")
        return deadline - now

    def _next_try(
        self,
        op: Op,
        exc: Exception,
        replica: Replica,
        tried: set[Replica],
        attempt: int,
        left_s: float,
        *,
        started: bool = False,
    ) -> tuple[float, int]:
        """After a failed attempt: (seconds to wait, the attempt count) before the next try,
        or the typed error raised. The one retry rule of both clients: a server out of
        reach is ejected and the call goes to another replica at once; with none left it
        waits as ClientOptions.retry_wait_s says; a stream that has answered once is never
        tried again."""
        error = rpc_error(exc, op.what, getattr(op, "offset", 0), tls=self.options.tls)
        if started or not isinstance(error, ServerUnavailable):
            raise error from exc
        if not isinstance(error, Overloaded):  # a full queue answers: the server is there
            self.replicas.failed(replica)
        tried.add(replica)
        if len(tried) < len(self.replicas.replicas) and self.replicas.others(replica):
            logger.info("%s: %s; trying another replica", op.what, error)
            return 0.0, attempt
        wait = self.options.retry_wait_s(error, attempt, left_s)
        if wait is None:
            raise error from exc
        logger.info("%s: %s; retrying in %.2f s", op.what, error, wait)
        tried.clear()
        return wait, attempt + 1

    def _channel_options(self) -> tuple[tuple[str, Any], ...]:
        """gRPC channel options; a name resolved to addresses is still the TLS name."""
        if self.replicas.dns and self.options.tls:
            host = self.replicas.dns.removeprefix("dns:///").rpartition(":")[0]
            return (*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", host))
        return CHANNEL_OPTIONS

    def _cached(self, op: Op) -> dict[str, Any] | None:
        return self._configs.get(op.model) if isinstance(op, GetConfig) else None

    def _remember(self, op: Op, result: Any) -> Any:
        if isinstance(op, GetConfig):
            self._configs[op.model] = result
        return result


def unary(op: Infer | GetConfig | IsReady, timeout_s: float) -> tuple[str, Any]:
    """The RPC method and request message of a unary operation. An inference request
    carries the call's remaining time (Triton's per-request timeout): one that waits in
    the server's queue past it is dropped there, not computed for a caller who is gone."""
    if isinstance(op, Infer):
        op.request.parameters["timeout"].int64_param = max(1, int(timeout_s * 1e6))
        return "ModelInfer", op.request
    if isinstance(op, GetConfig):
        return "ModelConfig", pb.ModelConfigRequest(name=op.model)
    if op.model is None:
        return "ServerReady", pb.ServerReadyRequest()
    return "ModelReady", pb.ModelReadyRequest(name=op.model)


def unary_result(op: Infer | GetConfig | IsReady, response: Any) -> Any:
    """What a plan receives for a unary operation's response."""
    if isinstance(op, Infer):
        return response
    if isinstance(op, GetConfig):
        return config_dict(response)
    return bool(response.ready)
