"""The bench's own HTTP/1.1 client for the OpenAI front door: a JSON body out, a JSON body
in, kept-alive connections (one per request in flight), nothing more.

The ``*_openai`` scenarios send with the official ``openai`` package, as pipelines do; its
own work (request building, response models) costs about a millisecond of CPU per request
here and runs on the cores the server uses. The ``*_http`` scenarios send the same requests
with this client, so that what the front door itself adds can be told apart from the SDK's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any
from urllib.parse import urlsplit


class HTTPStatusError(Exception):
    """The front door answered with an error status (its OpenAI error JSON kept)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class JSONPoster:
    """``await post("/embeddings", body)`` against a base URL such as
    ``http://127.0.0.1:8080/v1``; ``await close()`` closes every connection."""

    def __init__(self, base_url: str, api_key: str | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url}: expected http://host:port/path")
        self.host, self.port = parts.hostname, parts.port or 80
        self.prefix = parts.path.rstrip("/")
        self.headers = f"Host: {parts.netloc}\r\nContent-Type: application/json\r\n"
        if api_key:
            self.headers += f"Authorization: Bearer {api_key}\r\n"
        self._idle: list[Connection] = []

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        payload = json.dumps(body).encode()
        head = (
            f"POST {self.prefix}{path} HTTP/1.1\r\n{self.headers}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        connection = self._idle.pop() if self._idle else await self._open()
        reader, writer = connection
        try:
            writer.write(head.encode() + payload)
            status, answer, keep = await _response(reader)
        except BaseException:  # a broken or abandoned exchange: the connection goes
            writer.close()
            raise
        if keep:
            self._idle.append(connection)
        else:
            writer.close()
        if status != 200:
            raise HTTPStatusError(status, answer)
        return json.loads(answer)

    async def _open(self) -> Connection:
        return await asyncio.open_connection(self.host, self.port)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()
        for _, writer in idle:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection stays open) of one response with a
    Content-Length (the front door's JSON answers have one)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if "content-length" not in fields:
        raise ValueError(f"HTTP {status}: an answer without Content-Length is not handled here")
    body = await reader.readexactly(int(fields["content-length"]))
    return status, body, fields.get("connection", "").lower() != "close"
