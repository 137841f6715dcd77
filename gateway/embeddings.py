"""``POST /v1/embeddings``: texts and images (``data:image/...;base64,`` items) embedded
with the served family, in OpenAI's response form; vectors identical to the gRPC client's."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from vlpserve.client import AsyncClient
from vlpserve.errors import ClientError
from vlpserve.gateway.errors import APIError, from_client, invalid, unsupported

if TYPE_CHECKING:
    from vlpserve.gateway.app import GatewayOptions

_ITEM = re.compile(r"\b(?:IMAGE|TEXT) item (\d+)")
_DATA_URL = re.compile(r"^data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<b64>;base64)?,", re.I)


def image_of(item: str, index: int) -> bytes | None:
    """The image bytes of a data URL item, None for a text; remote URLs are refused."""
    if item.startswith(("http://", "https://")):
        raise invalid(
            f"input[{index}]: remote URLs are refused (this server fetches nothing): "
            "send the image as a data:image/...;base64, URL",
            f"input[{index}]",
        )
    found = _DATA_URL.match(item)
    if found is None:
        return None
    kind = (found.group("type") or "").lower()
    if not kind.startswith("image/") or not found.group("b64"):
        raise invalid(
            f"input[{index}]: a data URL item must be data:image/<type>;base64,...",
            f"input[{index}]",
        )
    try:
        return base64.b64decode(item[found.end() :], validate=True)
    except ValueError as exc:
        raise invalid(f"input[{index}]: the image is not valid base64", f"input[{index}]") from exc


def items_of(body: dict[str, Any], max_items: int) -> list[str]:
    found = body.get("input")
    if isinstance(found, str):
        found = [found]
    if not isinstance(found, list) or not found:
        raise invalid("input must be a string or a non-empty list of strings", "input")
    if len(found) > max_items:
        raise invalid(f"input holds {len(found)} items, more than {max_items}", "input")
    for index, item in enumerate(found):
        if not isinstance(item, str):
            raise invalid(
                f"input[{index}]: only strings are served (token arrays are not)",
                f"input[{index}]",
            )
    return found


def _moved(exc: ClientError, positions: list[int]) -> APIError:
    """A refusal about the n-th text or image, told about the caller's ``input[i]``."""
    message = str(exc)
    found = _ITEM.search(message)
    if found and int(found.group(1)) < len(positions):
        index = positions[int(found.group(1))]
        return from_client(type(exc)(f"input[{index}]: {message}"), f"input[{index}]")
    return from_client(exc, "input")


async def in_parts(
    call: Callable[[list[Any]], Awaitable[Any]], values: list[Any], part: int, at: list[int]
) -> list[Any]:
    """``call`` on ``part`` values at a time, one part after another: the client's chunks
    wait in one first-come queue (its concurrency limit), and a request keeps at most one
    part's chunks there, so others' requests get in between. Errors name the caller's
    ``input[i]`` (``at``: each value's position)."""
    found = []
    for start in range(0, len(values), part):
        try:
            found.append(await call(values[start : start + part]))
        except ClientError as exc:
            raise _moved(exc, at[start : start + part]) from exc
    return found


async def answer(
    client: AsyncClient, body: dict[str, Any], options: GatewayOptions
) -> dict[str, Any]:
    """The response to an embeddings request."""
    items = items_of(body, options.max_items)
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format must be 'float' or 'base64'", "encoding_format")
    texts: list[str] = []
    images: list[bytes] = []
    text_at: list[int] = []
    image_at: list[int] = []
    for index, item in enumerate(items):
        image = image_of(item, index)
        if image is None:
            texts.append(item)
            text_at.append(index)
        else:
            images.append(image)
            image_at.append(index)
    try:
        config = await client.model_config(client.models.text.name)
        width = int(config["output"][0]["dims"][-1])
        dimensions = body.get("dimensions")
        if dimensions is not None and dimensions != width:
            raise unsupported("dimensions", f"must be {width} (the model's) if given")

        text_part = options.parts_in_flight * await client.max_batch_size(client.models.text.name)
        image_part = options.parts_in_flight * await client.max_batch_size(client.models.image.name)

        async def embedded_texts() -> tuple[np.ndarray, np.ndarray]:
            if not texts:
                return np.zeros((0, width), np.float32), np.zeros(0, np.int32)
            parts = await in_parts(client.embed_texts_and_count, texts, text_part, text_at)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

        async def embedded_images() -> np.ndarray:
            if not images:
                return np.zeros((0, width), np.float32)
            parts = await in_parts(client.embed_images, images, image_part, image_at)
            return np.concatenate(parts)

        (text_rows, counts), image_rows = await asyncio.gather(embedded_texts(), embedded_images())
        tokens = int(counts.sum())
    except ClientError as exc:
        raise from_client(exc) from exc
    rows: list[np.ndarray] = [np.empty(0)] * len(items)
    for position, row in zip(text_at, text_rows, strict=True):
        rows[position] = row
    for position, row in zip(image_at, image_rows, strict=True):
        rows[position] = row
    data = [
        {
            "object": "embedding",
            "index": index,
            "embedding": base64.b64encode(row.astype("<f4").tobytes()).decode()
            if encoding == "base64"
            else row.tolist(),
        }
        for index, row in enumerate(rows)
    ]
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
