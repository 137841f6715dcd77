"""BLIP calls: captions and answers through Triton's streaming (decoupled) API, ITM scores.

``blip_caption`` and ``blip_vqa`` are decoupled models: generation runs in the server and
answers arrive as a stream. Several images go out on one stream at once, so the server
decodes them in one batch.
"""

from __future__ import annotations

import asyncio
import queue
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vlpserve.client.calls import bytes_input, check_pairs, translate_error
from vlpserve.client.inputs import ImageInput, image_to_bytes, images_to_bytes, texts_to_bytes
from vlpserve.contract import (
    IMAGE,
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    PROMPT,
    QUESTION,
    REPETITION_PENALTY,
    STREAM,
    STREAM_INVALID_INPUT,
    TEXT,
    blip_models,
)
from vlpserve.errors import ClientError, DeadlineExceeded, InvalidInput

_REQUEST_ID = re.compile(r"\[request id: ([^\]]*)\] ")
_ITEM = re.compile(r"\bitem 0\b")


def stream_error(model: str, message: str, index: int) -> ClientError:
    """The typed error for a stream error message about request ``index`` (its item 0 is
    the caller's item ``index``)."""
    invalid = message.startswith(STREAM_INVALID_INPUT)
    message = message.removeprefix(STREAM_INVALID_INPUT)
    message = _ITEM.sub(f"item {index}", message)
    return (InvalidInput if invalid else ClientError)(f"{model}: {message}")


CAPTION = blip_models("caption").raw.name
ITM = blip_models("itm").raw.name
VQA = blip_models("vqa").raw.name


def _tensor(name: str, value: Any, dtype: str) -> grpcclient.InferInput:
    array = np.array([value], dtype=object if dtype == "BYTES" else None)
    if dtype == "INT32":
        array = array.astype(np.int32)
    elif dtype == "FP32":
        array = array.astype(np.float32)
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def generation_inputs(
    image: bytes,
    *,
    text_name: str,
    text: str | None,
    max_new_tokens: int,
    num_beams: int,
    repetition_penalty: float,
    stream: bool,
) -> list[grpcclient.InferInput]:
    inputs = [
        _tensor(IMAGE, image, "BYTES"),
        _tensor(MAX_NEW_TOKENS, max_new_tokens, "INT32"),
        _tensor(NUM_BEAMS, num_beams, "INT32"),
        _tensor(REPETITION_PENALTY, repetition_penalty, "FP32"),
        _tensor(STREAM, stream, "BOOL"),
    ]
    if text is not None:
        inputs.append(_tensor(text_name, text.encode("utf-8"), "BYTES"))
    return inputs


def parse_response(result: Any, error: Any) -> tuple[str, str | None, bool, str | None]:
    """(request id, text piece, final, error message) of one streamed response."""
    if error is not None:
        message = error.message() if isinstance(error, InferenceServerException) else ""
        message = message or str(error)
        # Stream errors carry no response id; the server names the request in the text.
        found = _REQUEST_ID.match(message)
        request_id = found.group(1) if found else ""
        return request_id, None, True, message[found.end() :] if found else message
    response = result.get_response()
    final = response.parameters.get("triton_final_response")
    texts = result.as_numpy(TEXT)
    piece = None if texts is None else bytes(texts.reshape(-1)[0]).decode("utf-8")
    return response.id, piece, bool(final and final.bool_param), None


class _Texts:
    """Each request's pieces, joined into its text when its final response arrives."""

    def __init__(self, model: str, count: int) -> None:
        self.model = model
        self.count = count
        self.pieces: dict[int, list[str]] = {i: [] for i in range(count)}
        self.texts: dict[int, str] = {}

    @property
    def done(self) -> bool:
        return len(self.texts) == self.count

    def add(self, request_id: str, piece: str | None, final: bool, error: str | None) -> None:
        index = int(request_id) if request_id.isdigit() else 0
        if error is not None:
            raise stream_error(self.model, error, index)
        if piece:
            self.pieces[index].append(piece)
        if final:
            self.texts[index] = "".join(self.pieces[index])

    def ordered(self) -> list[str]:
        return [self.texts[i] for i in range(self.count)]


class _Stream:
    """One gRPC stream carrying several requests; responses sorted by request id."""

    def __init__(self, url: str) -> None:
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
        self.client.start_stream(callback=lambda result, error: self.responses.put((result, error)))

    def send(self, model: str, request_id: str, inputs: list[grpcclient.InferInput]) -> None:
        self.client.async_stream_infer(
            model, inputs, request_id=request_id, enable_empty_final_response=True
        )

    def next(self, deadline: float, what: str) -> tuple[str, str | None, bool, Any]:
        """(request id, text piece, final, error message) of the next response."""
        remaining = deadline - time.monotonic()
        try:
            result, error = self.responses.get(timeout=max(remaining, 0.001))
        except queue.Empty as exc:
            raise DeadlineExceeded(f"{what}: no answer within the deadline") from exc
        return parse_response(result, error)

    def close(self, *, cancel: bool = False) -> None:
        try:
            self.client.stop_stream(cancel_requests=cancel)
        finally:
            self.client.close()


def generate_many(
    url: str,
    model: str,
    requests: list[list[grpcclient.InferInput]],
    *,
    timeout_s: float,
) -> list[str]:
    """Send every request on one stream and collect each full text."""
    deadline = time.monotonic() + timeout_s
    stream = _Stream(url)
    texts = _Texts(model, len(requests))
    try:
        for index, inputs in enumerate(requests):
            stream.send(model, str(index), inputs)
        while not texts.done:
            texts.add(*stream.next(deadline, model))
    finally:
        stream.close(cancel=not texts.done)
    return texts.ordered()


def stream_one(
    url: str, model: str, inputs: list[grpcclient.InferInput], *, timeout_s: float
) -> Iterator[str]:
    """Yield text pieces of one request as the server generates them; closing the iterator
    early cancels the request on the server, which frees its place in the batch."""
    deadline = time.monotonic() + timeout_s
    stream = _Stream(url)
    finished = False
    try:
        stream.send(model, "0", inputs)
        while not finished:
            _, piece, finished, error = stream.next(deadline, model)
            if error is not None:
                raise stream_error(model, error, 0)
            if piece:
                yield piece
    finally:
        stream.close(cancel=not finished)


def check_generation(max_new_tokens: int, num_beams: int, repetition_penalty: float) -> None:
    """Client-side checks of the ranges the server enforces (it checks them too)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise InvalidInput(f"num_beams must be a positive int, got {num_beams!r}")
    if repetition_penalty <= 0:
        raise InvalidInput(f"repetition_penalty must be > 0, got {repetition_penalty!r}")


def caption_requests(
    images: Sequence[ImageInput],
    *,
    prompt: str | None,
    max_new_tokens: int,
    num_beams: int,
    repetition_penalty: float,
) -> list[list[grpcclient.InferInput]]:
    """One ``blip_caption`` request per image, every argument checked before any call."""
    check_generation(max_new_tokens, num_beams, repetition_penalty)
    return [
        generation_inputs(
            data,
            text_name=PROMPT,
            text=prompt,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
            stream=False,
        )
        for data in images_to_bytes(images)
    ]


def stream_request(
    image: ImageInput, *, prompt: str | None, max_new_tokens: int, repetition_penalty: float
) -> list[grpcclient.InferInput]:
    """The streamed (greedy) ``blip_caption`` request of one image."""
    check_generation(max_new_tokens, 1, repetition_penalty)
    return generation_inputs(
        image_to_bytes(image, 0),
        text_name=PROMPT,
        text=prompt,
        max_new_tokens=max_new_tokens,
        num_beams=1,
        repetition_penalty=repetition_penalty,
        stream=True,
    )


def answer_requests(
    images: Sequence[ImageInput],
    questions: Sequence[str],
    *,
    max_new_tokens: int,
    num_beams: int,
) -> list[list[grpcclient.InferInput]]:
    """One ``blip_vqa`` request per (image, question) pair."""
    check_generation(max_new_tokens, num_beams, 1.0)
    data = images_to_bytes(images)
    texts = texts_to_bytes(questions, "questions")
    check_pairs(len(data), len(texts), "questions")
    return [
        generation_inputs(
            image,
            text_name=QUESTION,
            text=question.decode("utf-8"),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=1.0,
            stream=False,
        )
        for image, question in zip(data, texts, strict=True)
    ]


def match_inputs(
    images: list[bytes], texts: list[bytes], start: int, size: int
) -> list[grpcclient.InferInput]:
    """The ``blip_itm`` inputs of pairs ``start`` to ``start + size``."""
    return [
        bytes_input(IMAGE, images[start : start + size]),
        bytes_input(TEXT, texts[start : start + size]),
    ]


def rpc_error(exc: Exception, model: str) -> ClientError:
    """The typed error for a gRPC failure of the asyncio client's stream."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    status = str(code()) if callable(code) else ""
    message = str(details() if callable(details) else exc)
    return translate_error(InferenceServerException(msg=message, status=status), model)


class _AsyncStream:
    """Requests on one stream of an asyncio tritonclient; responses as they come."""

    def __init__(
        self, client: Any, model: str, requests: list[list[grpcclient.InferInput]], deadline: float
    ) -> None:
        self.model = model
        self.deadline = deadline

        async def sent() -> AsyncIterator[dict[str, Any]]:
            for index, inputs in enumerate(requests):
                yield {"model_name": model, "inputs": inputs, "request_id": str(index)}

        timeout = max(deadline - asyncio.get_running_loop().time(), 0.001)
        self.call = client.stream_infer(sent(), stream_timeout=timeout)

    async def next(self) -> tuple[str, str | None, bool, str | None]:
        try:
            async with asyncio.timeout_at(self.deadline):
                result, error = await anext(self.call)
        except TimeoutError as exc:
            raise DeadlineExceeded(f"{self.model}: no answer within the deadline") from exc
        except StopAsyncIteration as exc:
            raise ClientError(f"{self.model}: the stream ended before the answer") from exc
        except InferenceServerException as exc:
            raise translate_error(exc, self.model) from exc
        except Exception as exc:  # grpc.aio.AioRpcError: deadline, unavailable, ...
            if hasattr(exc, "code"):
                raise rpc_error(exc, self.model) from exc
            raise
        return parse_response(result, error)

    def cancel(self) -> None:
        self.call.cancel()


async def generate_many_async(
    client: Any, model: str, requests: list[list[grpcclient.InferInput]], *, timeout_s: float
) -> list[str]:
    """``generate_many`` over the asyncio client: one stream, every full text."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    stream = _AsyncStream(client, model, requests, deadline)
    texts = _Texts(model, len(requests))
    try:
        while not texts.done:
            texts.add(*await stream.next())
    finally:
        stream.cancel()  # every answer is in (nothing left to cancel), or give up the rest
    return texts.ordered()


async def stream_one_async(
    client: Any, model: str, inputs: list[grpcclient.InferInput], *, timeout_s: float
) -> AsyncIterator[str]:
    """``stream_one`` over the asyncio client; closing the generator early (``aclose``, or
    leaving an ``async for``) cancels the request on the server."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    stream = _AsyncStream(client, model, [inputs], deadline)
    finished = False
    try:
        while not finished:
            _, piece, finished, error = await stream.next()
            if error is not None:
                raise stream_error(model, error, 0)
            if piece:
                yield piece
    finally:
        stream.cancel()


__all__ = [
    "CAPTION",
    "ITM",
    "PROMPT",
    "QUESTION",
    "VQA",
    "answer_requests",
    "caption_requests",
    "check_generation",
    "generate_many",
    "generate_many_async",
    "generation_inputs",
    "match_inputs",
    "stream_one",
    "stream_one_async",
    "stream_request",
]
