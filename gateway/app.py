"""The front door: a Starlette app over one ``AsyncClient`` per family.

Pipelines that speak OpenAI's API (LangChain, LlamaIndex, vector databases, any language's
SDK) use vlpserve unchanged: ``/v1/embeddings`` embeds texts and images (an ``input`` item
that is a ``data:image/...;base64,`` URL is an image, as NV-CLIP takes them; the server
never fetches a remote URL), ``/v1/chat/completions`` captions (``blip-caption``: the text
is the prompt) or answers (``blip-vqa``: the text is the question) one image, streamed as
server-sent events with ``stream: true``. Errors are OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from vlpserve.client import AsyncClient
from vlpserve.errors import ClientError, ConfigError
from vlpserve.gateway import chat, embeddings
from vlpserve.gateway.errors import (
    APIError,
    from_client,
    invalid,
    too_large,
    too_slow,
    unauthorized,
    unknown_model,
)

# OpenAI model name -> (client family, the raw models that must be ready to serve it)
MODELS: dict[str, tuple[str, tuple[str, ...]]] = {
    "clip": ("clip", ("clip_text", "clip_image")),
    "groupvit": ("groupvit", ("groupvit_text", "groupvit_image")),
    "siglip": ("siglip", ("siglip_text", "siglip_image")),
    "blip-caption": ("blip", ("blip_caption",)),
    "blip-vqa": ("blip", ("blip_vqa",)),
}
SERVED_TTL_S = 5.0  # how long the list of served models is trusted


@dataclass(frozen=True, kw_only=True)
class GatewayOptions:
    """Where Triton is and how the front door answers.

    ``api_key``: callers must send ``Authorization: Bearer <key>`` (compared in constant
    time). ``triton_api_key``: the key the front door sends to Triton, which must differ, so
    that a caller of the OpenAI API cannot call Triton's raw models with its key.
    ``tls_ca``: Triton's gRPC is TLS with this CA. ``tls_cert``/``tls_key``: the front door
    itself serves HTTPS with this identity.

    Bounds: ``max_body_bytes`` per request (413), ``max_items`` per ``input`` (400), the body
    within ``body_timeout_s`` (408), a request head within ``head_timeout_s`` of connecting
    or of the previous response (the connection is closed), ``max_connections`` at once
    (503 beyond). Each request keeps at most ``parts_in_flight`` batches of its items in
    the client's queue of chunks, so a large request cannot starve small ones.
    """

    triton: str
    api_key: str | None = field(default=None, repr=False)
    triton_api_key: str | None = field(default=None, repr=False)
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    max_body_bytes: int = 64 * 2**20
    max_items: int = 2048  # as OpenAI's embeddings endpoint
    body_timeout_s: float = 60.0
    head_timeout_s: float = 10.0
    max_connections: int = 512
    parts_in_flight: int = 2

    def __post_init__(self) -> None:
        if self.api_key and self.api_key == self.triton_api_key:
            raise ConfigError(
                "the front door's callers need a key of their own, not the server's: with it "
                "they could call tritonserver's raw models"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("the front door's TLS needs both a certificate and its key")
        if min(self.max_items, self.max_connections, self.parts_in_flight) < 1:
            raise ConfigError("max_items, max_connections and parts_in_flight must be >= 1")


class Gateway:
    """The app's state: clients (opened in the serving loop) and the served models."""

    def __init__(self, options: GatewayOptions) -> None:
        self.options = options
        self.clients: dict[str, AsyncClient] = {}
        self._served: tuple[float, list[str]] = (0.0, [])

    def client(self, family: str) -> AsyncClient:
        if family not in self.clients:
            self.clients[family] = AsyncClient(
                self.options.triton,
                family=family,
                timeout_s=self.options.timeout_s,
                api_key=self.options.triton_api_key,
                tls_ca=self.options.tls_ca,
            )
        return self.clients[family]

    async def served(self) -> list[str]:
        """The OpenAI model names whose raw models the server has ready (cached briefly)."""
        checked, names = self._served
        if time.monotonic() - checked < SERVED_TTL_S:
            return names
        wanted = sorted({m for _, models in MODELS.values() for m in models})
        ready = await self.client("clip").models_ready(wanted)
        names = [name for name, (_, models) in MODELS.items() if all(ready[m] for m in models)]
        self._served = (time.monotonic(), names)
        return names

    async def family_of(self, model: object, kind: str) -> str:
        """The client family serving ``model`` for ``kind`` ("embeddings" or "chat")."""
        if not isinstance(model, str) or not model:
            raise invalid("model must be a model name", "model")
        try:
            served = await self.served()
        except ClientError as exc:  # the server is down: 503
            raise from_client(exc) from exc
        if model not in served:
            raise unknown_model(model, served)
        family = MODELS[model][0]
        if (family == "blip") != (kind == "chat"):
            other = "chat completions" if family == "blip" else "embeddings"
            raise invalid(f"{model!r} serves {other}, not {kind}", "model")
        return family

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()


def _authorized(gateway: Gateway, request: Request) -> None:
    key = gateway.options.api_key
    if key:
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, f"Bearer {key}".encode()):  # no timing to learn
            raise unauthorized()


def _parse(data: bytes) -> Any:
    """JSON, off the event loop (a 64 MiB body takes seconds); nesting too deep for the
    parser is the caller's mistake, not the server's."""
    try:
        return json.loads(data)
    except RecursionError as exc:
        raise invalid("the body is not JSON this server takes: nested too deeply") from exc
    except ValueError as exc:
        raise invalid(f"the body is not JSON: {exc}") from exc


async def _body(gateway: Gateway, request: Request) -> dict[str, Any]:
    """The JSON body, refused with 413 beyond the size limit (before reading it all) and
    with 408 when it does not arrive in time."""
    _authorized(gateway, request)
    options = gateway.options
    limit = options.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        data = await asyncio.wait_for(read(), options.body_timeout_s)
    except TimeoutError as exc:
        raise too_slow(options.body_timeout_s) from exc
    body = await asyncio.to_thread(_parse, data)
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    return body


def _error(exc: APIError) -> JSONResponse:
    # A body that never arrived leaves the connection unusable: close it.
    headers = {"connection": "close"} if exc.status == 408 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def create_app(options: GatewayOptions) -> Starlette:
    """The ASGI app (run it with uvicorn)."""
    gateway = Gateway(options)

    async def models(request: Request) -> Response:
        try:
            _authorized(gateway, request)
            names = await gateway.served()
        except APIError as exc:
            return _error(exc)
        except ClientError as exc:
            return _error(from_client(exc))
        created = int(time.time())
        data = [
            {"id": n, "object": "model", "created": created, "owned_by": "vlpserve"} for n in names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def embed(request: Request) -> Response:
        try:
            body = await _body(gateway, request)
            family = await gateway.family_of(body.get("model"), "embeddings")
            found = await embeddings.answer(gateway.client(family), body, gateway.options)
        except APIError as exc:
            return _error(exc)
        return await asyncio.to_thread(JSONResponse, found)  # rendering is work too

    async def complete(request: Request) -> Response:
        try:
            body = await _body(gateway, request)
            await gateway.family_of(body.get("model"), "chat")
            asked = chat.parse(body)
            client = gateway.client("blip")
            if asked.stream:
                first, pieces = await chat.start_stream(client, asked)
                return StreamingResponse(
                    chat.events(asked, first, pieces), media_type="text/event-stream"
                )
            return JSONResponse(await chat.answer(client, asked))
        except APIError as exc:
            return _error(exc)

    async def health(request: Request) -> Response:
        try:
            ready = bool(await gateway.served())
        except ClientError:
            ready = False
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await gateway.close()

    return Starlette(
        routes=[
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/embeddings", embed, methods=["POST"]),
            Route("/v1/chat/completions", complete, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


__all__ = ["MODELS", "Gateway", "GatewayOptions", "completion_id", "create_app"]
