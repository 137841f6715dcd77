"""``POST /v1/chat/completions``: one user message with one image (a data URL) and optional
text; ``blip-caption`` captions it (the text is the prompt), ``blip-vqa`` answers (the text
is the question). Greedy decoding only: fields that ask for more get 400 naming the field."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from vlpserve.client import AsyncClient
from vlpserve.errors import ClientError
from vlpserve.gateway.embeddings import image_of
from vlpserve.gateway.errors import APIError, from_client, invalid, unsupported

MAX_TOKENS = 256  # the generation models' bound on new tokens
DEFAULT_TOKENS = {"blip-caption": 30, "blip-vqa": 10}
# Fields that ask for what greedy decoding of one image cannot give.
REFUSED = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "response_format",
    "stop",
    "audio",
    "modalities",
    "prediction",
    "logit_bias",
)


@dataclass(frozen=True)
class Asked:
    """A chat request, checked."""

    model: str
    image: bytes
    text: str | None
    max_tokens: int
    stream: bool


def _default(body: dict[str, Any], name: str, neutral: float) -> None:
    value = body.get(name)
    if value is not None and value != neutral:
        raise unsupported(name, f"must be {neutral} (decoding is greedy) if given")


def parse(body: dict[str, Any]) -> Asked:
    """The request's one image and text, or 400 naming the field that cannot be served."""
    for name in REFUSED:
        if body.get(name) not in (None, [], {}):
            raise unsupported(name)
    if body.get("n", 1) != 1:
        raise unsupported("n", "must be 1 (one choice per request)")
    _default(body, "temperature", 0)
    _default(body, "top_p", 1)
    _default(body, "presence_penalty", 0)
    _default(body, "frequency_penalty", 0)
    model = str(body.get("model"))
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None:
        limit = DEFAULT_TOKENS[model]
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_TOKENS:
        raise invalid(f"max_tokens must be an integer in 1..{MAX_TOKENS}", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or len(messages) != 1 or not isinstance(messages[0], dict):
        raise invalid("send exactly one message (the user's, with one image)", "messages")
    message = messages[0]
    if message.get("role") != "user":
        raise invalid("the message's role must be 'user'", "messages[0].role")
    content = message.get("content")
    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
    if not isinstance(parts, list):
        raise invalid("content must be a string or a list of parts", "messages[0].content")
    images: list[bytes] = []
    texts: list[str] = []
    for index, part in enumerate(parts):
        where = f"messages[0].content[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict):
            url = part["image_url"].get("url")
            image = image_of(url, index) if isinstance(url, str) else None
            if image is None:
                raise invalid("image_url.url must be a data:image/...;base64, URL", where)
            images.append(image)
        else:
            raise invalid(f"unsupported content part {kind!r}", where)
    if len(images) != 1:
        raise unsupported("messages[0].content", f"must hold exactly one image, not {len(images)}")
    text = " ".join(t for t in texts if t.strip()) or None
    if model == "blip-vqa" and text is None:
        raise invalid("blip-vqa answers a question: add a text part", "messages[0].content")
    return Asked(model, images[0], text, limit, bool(body.get("stream", False)))


def _call(client: AsyncClient, asked: Asked, stream: bool) -> Any:
    if asked.model == "blip-vqa":
        question = asked.text or ""  # parse() requires one
        if stream:
            return client.stream_answer(asked.image, question, max_new_tokens=asked.max_tokens)
        return client.answer([asked.image], [question], max_new_tokens=asked.max_tokens)
    if stream:
        return client.stream_caption(
            asked.image, prompt=asked.text, max_new_tokens=asked.max_tokens
        )
    return client.caption([asked.image], prompt=asked.text, max_new_tokens=asked.max_tokens)


def _moved(exc: ClientError) -> APIError:
    return from_client(exc, "messages[0].content")


async def answer(client: AsyncClient, asked: Asked) -> dict[str, Any]:
    try:
        (text,) = await _call(client, asked, stream=False)
    except ClientError as exc:
        raise _moved(exc) from exc
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": asked.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
    }


async def start_stream(client: AsyncClient, asked: Asked) -> tuple[str, AsyncIterator[str]]:
    """The first piece, awaited before the response starts (so a bad request still gets
    its 400), and the rest."""
    pieces: AsyncIterator[str] = _call(client, asked, stream=True)
    try:
        first = await anext(pieces)
    except StopAsyncIteration:
        first = ""
    except ClientError as exc:
        raise _moved(exc) from exc
    return first, pieces


async def events(asked: Asked, first: str, pieces: AsyncIterator[str]) -> AsyncIterator[bytes]:
    """Server-sent events in OpenAI's chunk form, ``data: [DONE]`` at the end; a failure
    after the start is sent as an ``error`` event."""
    identity = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": asked.model,
    }

    def event(delta: dict[str, str], finish: str | None = None) -> bytes:
        chunk = identity | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk)}\n\n".encode()

    yield event({"role": "assistant", "content": first})
    try:
        async for piece in pieces:
            yield event({"content": piece})
    except ClientError as exc:
        error = _moved(exc)
        yield f"data: {json.dumps(error.body())}\n\n".encode()
        return
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()  # the client left early: cancel the request on the server
    yield event({}, "stop")
    yield b"data: [DONE]\n\n"
