"""Python-backend ``blip_caption`` / ``blip_vqa``: generation driven in the server.

Decoupled: ``execute`` hands each request to a small admission pool (decode the image, run
the vision encoder, tokenize the prompt or encode the question) and returns at once; the
generation engine decodes every admitted request in one batch and sends responses as
tokens arrive (``STREAM``) or once at the end. A cancelled request leaves the batch at the
next step.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from vlpserve.contract import (
    IMAGE,
    IMAGE_EMBEDS,
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    PIXEL_VALUES,
    PROMPT,
    QUESTION,
    REPETITION_PENALTY,
    STREAM,
    STREAM_INVALID_INPUT,
    TEXT,
)
from vlpserve.model_repository.runtime.blip_common import (
    BlipText,
    load_images,
    one_number,
    one_text,
    question_states,
)
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.generation import (
    DecoderGraphs,
    Engine,
    GenerationParams,
    Job,
)
from vlpserve.model_repository.runtime.sessions import ort_session
from vlpserve.model_repository.runtime.triton import ModelArgs, PhaseMetrics

logger = logging.getLogger(__name__)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _optional(request: Any, name: str) -> np.ndarray | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.asarray(tensor.as_numpy())


def _text_response(text: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(TEXT, np.array([text.encode("utf-8")], dtype=object))]
    )


class _Reply:
    """Sends one request's responses: pieces while streaming, the text at the end."""

    def __init__(self, request: Any, text: BlipText, stream: bool) -> None:
        self.sender = request.get_response_sender()
        self.request = request
        self.text = text
        self.stream = stream
        self.ids: list[int] = []  # the prompt, then every generated token
        self.sent = ""
        request_id = request.request_id()
        # Stream errors reach the client without the response id: name the request here.
        self.prefix = f"[request id: {request_id}] " if request_id else ""

    def cancelled(self) -> bool:
        return bool(self.sender.is_cancelled())

    def tokens(self, tokens: list[int]) -> None:
        self.ids += tokens
        if not self.stream:
            return
        text = self.text.decode(self.ids)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.sender.send(_text_response(text[len(self.sent) :]))
            self.sent = text

    def done(self, ids: list[int] | None, error: str | None) -> None:
        try:
            if error is not None:
                code = (
                    pb_utils.TritonError.CANCELLED
                    if error == "cancelled"
                    else pb_utils.TritonError.INTERNAL
                )
                response = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(self.prefix + error, code)
                )
                self.sender.send(response, flags=FINAL)
                return
            text = self.text.decode(ids or [])
            if not self.stream:
                self.sender.send(_text_response(text), flags=FINAL)
            elif text.startswith(self.sent) and len(text) > len(self.sent):
                self.sender.send(_text_response(text[len(self.sent) :]), flags=FINAL)
            else:  # a final response with an (empty) TEXT: clients need no empty-final flag
                self.sender.send(_text_response(""), flags=FINAL)
        except Exception:  # the client may be gone (cancelled): nothing left to tell it
            logger.info("could not send the final response", exc_info=True)

    def invalid(self, message: str) -> None:
        text = self.prefix + STREAM_INVALID_INPUT + message
        error = pb_utils.TritonError(text, pb_utils.TritonError.INVALID_ARG)
        self.sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)


class TritonPythonModel:
    """Captioning (prompt optional) or VQA (question required) over BLIP's graphs."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        folder = model.version_dir
        self.kind = model.parameter("kind")
        self.bos = int(model.parameter("bos_token_id"))
        self.max_length = int(model.parameter("max_text_length"))
        self.text = BlipText(folder / "tokenizer")
        self.images = load_images(folder)
        # The vision encoder (admission threads) and the decoder (engine thread) run at the
        # same time in this process, each with its own intra-op pool: spinning threads of one
        # would take the cores the other works on, so they do not spin by default.
        spin = model.parameter("intra_op_spinning", "0") == "1"
        self.vision = ort_session(folder / "vision_encoder.onnx", on_gpu=model.on_gpu, spin=spin)
        self.question_encoder = (
            ort_session(folder / "question_encoder.onnx", on_gpu=model.on_gpu, spin=spin)
            if self.kind == "vqa"
            else None
        )
        graphs = DecoderGraphs(
            folder / "decoder_first.onnx",
            folder / "decoder_step.onnx",
            on_gpu=model.on_gpu,
            spin=spin,
        )
        # encode: vision (and question) encoders per request; first / step: decoder calls.
        self.metrics = PhaseMetrics(model.name, ("encode", "first", "step"))
        self.engine = Engine(
            graphs,
            eos=int(model.parameter("sep_token_id")),
            max_rows=int(model.parameter("max_batch_rows", "64")),
            observe=self.metrics.observe,
        )
        self.pool = ThreadPoolExecutor(
            max_workers=int(model.parameter("admission_threads", "2")),
            thread_name_prefix="admit",
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.pool.submit(self._admit, request)
        return None

    def _params(self, request: Any) -> GenerationParams:
        try:
            return GenerationParams(
                max_new_tokens=int(
                    one_number(_optional(request, MAX_NEW_TOKENS), MAX_NEW_TOKENS, 30)
                ),
                num_beams=int(one_number(_optional(request, NUM_BEAMS), NUM_BEAMS, 1)),
                repetition_penalty=one_number(
                    _optional(request, REPETITION_PENALTY), REPETITION_PENALTY, 1.0
                ),
            )
        except ValueError as exc:
            message = str(exc)
            for name in (MAX_NEW_TOKENS, NUM_BEAMS, REPETITION_PENALTY):
                message = message.replace(name.lower(), name)
            raise ValueError(message) from exc

    def _admit(self, request: Any) -> None:
        stream = bool(one_number(_optional(request, STREAM), STREAM, 0.0))
        reply = _Reply(request, self.text, stream)
        try:
            params = self._params(request)
            images = _optional(request, IMAGE)
            if images is None or images.size != 1:
                raise ValueError(f"{IMAGE}: send one image per request")
            try:
                image = self.images.decode(bytes(images.reshape(-1)[0]), 0)
            except InputItemError as exc:
                raise ValueError(f"{IMAGE} {exc}") from exc
            if self.kind == "caption":
                prompt = one_text(_optional(request, PROMPT), PROMPT)
                ids = self.text.encode(prompt) if prompt else [self.bos, 0]
                ids = [self.bos, *ids[1:-1]]  # [DEC] replaces [CLS]; the prompt's [SEP] goes
                what, length = PROMPT, len(ids)
            else:
                question = one_text(_optional(request, QUESTION), QUESTION)
                if not question:
                    raise ValueError(f"{QUESTION} is missing or empty")
                question_ids = self.text.encode(question)
                ids, what, length = [self.bos], QUESTION, len(question_ids)
            if length + params.max_new_tokens > self.max_length:
                raise ValueError(
                    f"{what} is {length} tokens: with {MAX_NEW_TOKENS} "
                    f"{params.max_new_tokens} it exceeds the model's {self.max_length} positions"
                )
            started = time.perf_counter()
            pixels = self.images(image)[None]
            (embeds,) = self.vision.run([IMAGE_EMBEDS], {PIXEL_VALUES: pixels})
            states = embeds[0]
            if self.question_encoder is not None:
                states = question_states(self.question_encoder, question_ids, embeds)
            self.metrics.observe("encode", time.perf_counter() - started, 1)
        except ValueError as exc:
            reply.invalid(str(exc))
            return
        except Exception as exc:
            logger.exception("admission failed")
            reply.done(None, f"{type(exc).__name__}: {exc}")
            return
        reply.ids = list(ids)
        self.engine.submit(
            Job(
                prompt=ids,
                states=states,
                params=params,
                on_tokens=reply.tokens,
                on_done=reply.done,
                cancelled=reply.cancelled,
            )
        )

    def finalize(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()
