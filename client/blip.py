"""BLIP calls: captions and answers through Triton's streaming (decoupled) API, ITM scores.

``blip_caption`` and ``blip_vqa`` are decoupled models: generation runs in the server and
answers arrive as a stream. Several images go out on one stream at once, so the server
decodes them in one batch.
"""

from __future__ import annotations

import queue
import re
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vlpserve.contract import (
    IMAGE,
    ITC_SCORE,
    ITM_SCORE,
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
    texts: dict[int, str] = {}
    cancel = True
    try:
        for index, inputs in enumerate(requests):
            stream.send(model, str(index), inputs)
        pieces: dict[int, list[str]] = {i: [] for i in range(len(requests))}
        while len(texts) < len(requests):
            request_id, piece, final, error = stream.next(deadline, model)
            index = int(request_id) if request_id.isdigit() else 0
            if error is not None:
                raise stream_error(model, error, index)
            if piece:
                pieces[index].append(piece)
            if final:
                texts[index] = "".join(pieces[index])
        cancel = False
    finally:
        stream.close(cancel=cancel)
    return [texts[i] for i in range(len(requests))]


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


def itm_outputs() -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(ITM_SCORE), grpcclient.InferRequestedOutput(ITC_SCORE)]


__all__ = [
    "CAPTION",
    "ITM",
    "PROMPT",
    "QUESTION",
    "VQA",
    "check_generation",
    "generate_many",
    "generation_inputs",
    "itm_outputs",
    "stream_one",
]
