"""BLIP requests and answers: captions and answers come from decoupled models through
Triton's streaming RPC (``ModelStreamInfer``), ITM scores from a batched model.

Several images go out on one stream at once, so the server decodes them in one batch. Stream
errors carry no status code: the server starts the message with the request id and, for bad
input, with ``STREAM_INVALID_INPUT`` (an overloaded engine: ``STREAM_OVERLOADED``; such a
refusal is raised as ``Overloaded``, not retried, since the stream's other requests go on).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from vlpserve.client.inputs import ImageInput, image_to_bytes, images_to_bytes, texts_to_bytes
from vlpserve.client.wire import deserialize_bytes, infer_request, translate
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
    STREAM_OVERLOADED,
    STREAM_STOPPING,
    TEXT,
    blip_models,
)
from vlpserve.errors import ClientError, InvalidInput, Overloaded, ServerUnavailable

CAPTION = blip_models("caption").raw.name
ITM = blip_models("itm").raw.name
VQA = blip_models("vqa").raw.name

_REQUEST_ID = re.compile(r"\[request id: ([^\]]*)\] ")
_ITEM = re.compile(r"\bitem 0\b")


def match_output(head: str) -> str:
    if head not in ("itm", "itc"):
        raise InvalidInput(f"head must be 'itm' or 'itc', got {head!r}")
    return ITM_SCORE if head == "itm" else ITC_SCORE


def check_pairs(images: int, texts: int, what: str) -> None:
    if images != texts:
        raise InvalidInput(f"{images} images but {texts} {what}: give pairs")


def check_generation(max_new_tokens: int, num_beams: int, repetition_penalty: float) -> None:
    """Client-side checks of the ranges the server enforces (it checks them too)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInput(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(num_beams, int) or num_beams < 1:
        raise InvalidInput(f"num_beams must be a positive int, got {num_beams!r}")
    if repetition_penalty <= 0:
        raise InvalidInput(f"repetition_penalty must be > 0, got {repetition_penalty!r}")


def generation_request(
    model: str,
    index: int,
    image: bytes,
    *,
    text_name: str,
    text: str | None,
    max_new_tokens: int,
    num_beams: int,
    repetition_penalty: float,
    stream: bool,
) -> pb.ModelInferRequest:
    """One request of a decoupled generation model; its id is ``index``, which names it in
    the answers of a stream carrying several."""
    inputs = {
        IMAGE: np.array([image], dtype=object),
        MAX_NEW_TOKENS: np.array([max_new_tokens], dtype=np.int32),
        NUM_BEAMS: np.array([num_beams], dtype=np.int32),
        REPETITION_PENALTY: np.array([repetition_penalty], dtype=np.float32),
        STREAM: np.array([stream], dtype=bool),
    }
    if text is not None:
        inputs[text_name] = np.array([text.encode("utf-8")], dtype=object)
    # An empty final response marks the end of a streamed request whose last piece was sent.
    flags = {"triton_enable_empty_final_response": True}
    return infer_request(model, inputs, request_id=str(index), parameters=flags)


def caption_requests(
    images: Sequence[ImageInput],
    *,
    prompt: str | None,
    max_new_tokens: int,
    num_beams: int,
    repetition_penalty: float,
) -> list[pb.ModelInferRequest]:
    """One ``blip_caption`` request per image, every argument checked before any call."""
    check_generation(max_new_tokens, num_beams, repetition_penalty)
    return [
        generation_request(
            CAPTION,
            index,
            data,
            text_name=PROMPT,
            text=prompt,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
            stream=False,
        )
        for index, data in enumerate(images_to_bytes(images))
    ]


def stream_request(
    image: ImageInput,
    *,
    prompt: str | None = None,
    question: str | None = None,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
) -> pb.ModelInferRequest:
    """The streamed (greedy) request of one image: ``blip_caption`` (an optional prompt), or
    ``blip_vqa`` when a ``question`` is given."""
    check_generation(max_new_tokens, 1, repetition_penalty)
    if question is not None and not isinstance(question, str):
        raise TypeError("question must be a str")
    return generation_request(
        CAPTION if question is None else VQA,
        0,
        image_to_bytes(image, 0),
        text_name=PROMPT if question is None else QUESTION,
        text=prompt if question is None else question,
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
) -> list[pb.ModelInferRequest]:
    """One ``blip_vqa`` request per (image, question) pair."""
    check_generation(max_new_tokens, num_beams, 1.0)
    data = images_to_bytes(images)
    texts = texts_to_bytes(questions, "questions")
    check_pairs(len(data), len(texts), "questions")
    return [
        generation_request(
            VQA,
            index,
            image,
            text_name=QUESTION,
            text=question.decode("utf-8"),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=1.0,
            stream=False,
        )
        for index, (image, question) in enumerate(zip(data, texts, strict=True))
    ]


def stream_error(model: str, message: str, index: int) -> ClientError:
    """The typed error for a stream error message about request ``index`` (its item 0 is
    the caller's item ``index``)."""
    message = _ITEM.sub(f"item {index}", message)
    for prefix, typed in (
        (STREAM_INVALID_INPUT, InvalidInput),
        (STREAM_OVERLOADED, Overloaded),
        (STREAM_STOPPING, ServerUnavailable),
    ):
        if message.startswith(prefix):
            return typed(f"{model}: {message.removeprefix(prefix)}")
    return translate(None, message, model)  # Triton's own (an unloading model, say)


@dataclass(frozen=True)
class Piece:
    """One streamed answer: a request's next text piece and whether it is its last, or the
    error that ended the request (an error is always a request's final answer)."""

    index: int
    text: str
    final: bool
    error: ClientError | None = None


def piece(model: str, message: pb.ModelStreamInferResponse) -> Piece:
    """The piece a stream message carries, or the typed error it reports."""
    if message.error_message:
        # Stream errors carry no response id; the server names the request in the text.
        found = _REQUEST_ID.match(message.error_message)
        request_id = found.group(1) if found else ""
        text = message.error_message[found.end() :] if found else message.error_message
        index = int(request_id) if request_id.isdigit() else 0
        return Piece(index, "", True, stream_error(model, text, index))
    response = message.infer_response
    final = response.parameters.get("triton_final_response")
    text = ""
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.name == TEXT:
            text = b"".join(deserialize_bytes(raw).tolist()).decode("utf-8")
    index = int(response.id) if response.id.isdigit() else 0
    return Piece(index, text, bool(final and final.bool_param))


class Texts:
    """Each request's pieces, joined into its text when its final answer arrives, and the
    first error among them.

    A stream whose requests have all had their final answer is never cancelled: the
    clients read it to its end. (Triton 2.51's Python backend keeps a model it cannot
    unload any more when a request is cancelled after its final answer.)"""

    def __init__(self, model: str, count: int) -> None:
        self.model = model
        self.pieces: list[list[str]] = [[] for _ in range(count)]
        self.finished = [False] * count
        self.failure: ClientError | None = None
        self.started = False  # an answer arrived: the stream is not retried after that

    @property
    def done(self) -> bool:
        return all(self.finished)

    def add(self, message: pb.ModelStreamInferResponse) -> Piece:
        self.started = True
        found = piece(self.model, message)
        self.pieces[found.index].append(found.text)
        self.finished[found.index] |= found.final
        self.failure = self.failure or found.error
        return found

    def stop_reading(self) -> bool:
        """After an answer: True when a failure ends the call while requests still run
        (the caller then cancels them)."""
        return self.failure is not None and not self.done

    def outcome(self) -> None:
        """Raise the first failure, or ClientError when the stream ended too early."""
        if self.failure is not None:
            raise self.failure
        if not self.done:
            raise ClientError(f"{self.model}: the stream ended before every answer")

    def ordered(self) -> list[str]:
        return ["".join(pieces) for pieces in self.pieces]
