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
from vlpserve.model_repository.runtime.errors import InputItemError, InvalidRequest, named
from vlpserve.model_repository.runtime.generation import (
    DecoderGraphs,
    Engine,
    GenerationParams,
    Job,
)
from vlpserve.model_repository.runtime.params import BlipGenerateParams
from vlpserve.model_repository.runtime.triton import ModelArgs, PhaseMetrics, optional_array

logger = logging.getLogger(__name__)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


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
        self.name = model.name
        folder = model.folder
        params = model.params(BlipGenerateParams)
        self.kind = params.kind
        self.bos = params.bos_token_id
        self.max_length = params.max_text_length
        self.text = BlipText(folder.tokenizer_file)
        self.images = load_images(folder.preprocessor_file)
        self.vision = model.session(folder.graph("vision_encoder"), params)
        self.question_encoder = (
            model.session(folder.graph("question_encoder"), params) if self.kind == "vqa" else None
        )
        graphs = DecoderGraphs(
            model.session(folder.graph("decoder_first"), params),
            model.session(folder.graph("decoder_step"), params),
        )
        # encode: vision (and question) encoders per request; first / step: decoder calls.
        self.metrics = PhaseMetrics(model.name, ("encode", "first", "step"))
        self.engine = Engine(
            graphs,
            eos=params.sep_token_id,
            max_rows=params.max_batch_rows,
            observe=self.metrics.observe,
        )
        self.pool = ThreadPoolExecutor(
            max_workers=params.admission_threads, thread_name_prefix="admit"
        )

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self.pool.submit(self._admit, request)
        return None

    def _params(self, request: Any) -> GenerationParams:
        try:
            return GenerationParams(
                max_new_tokens=int(
                    one_number(optional_array(request, MAX_NEW_TOKENS), MAX_NEW_TOKENS, 30)
                ),
                num_beams=int(one_number(optional_array(request, NUM_BEAMS), NUM_BEAMS, 1)),
                repetition_penalty=one_number(
                    optional_array(request, REPETITION_PENALTY), REPETITION_PENALTY, 1.0
                ),
            )
        except ValueError as exc:  # GenerationParams' range checks
            message = str(exc)
            for name in (MAX_NEW_TOKENS, NUM_BEAMS, REPETITION_PENALTY):
                message = message.replace(name.lower(), name)
            raise InvalidRequest(message) from exc

    def _prompt(self, request: Any, params: GenerationParams) -> tuple[list[int], list[int]]:
        """The decoder's prompt ids, and the question's ids (VQA; empty for captions)."""
        if self.kind == "caption":
            prompt = one_text(optional_array(request, PROMPT), PROMPT)
            ids = self.text.encode(prompt) if prompt else [self.bos, 0]
            ids = [self.bos, *ids[1:-1]]  # [DEC] replaces [CLS]; the prompt's [SEP] goes
            what, length, question_ids = PROMPT, len(ids), []
        else:
            question = one_text(optional_array(request, QUESTION), QUESTION)
            if not question:
                raise InvalidRequest(f"{QUESTION} is missing or empty")
            question_ids = self.text.encode(question)
            ids, what, length = [self.bos], QUESTION, len(question_ids)
        if length + params.max_new_tokens > self.max_length:
            raise InvalidRequest(
                f"{what} is {length} tokens: with {MAX_NEW_TOKENS} "
                f"{params.max_new_tokens} it exceeds the model's {self.max_length} positions"
            )
        return ids, question_ids

    def _admit(self, request: Any) -> None:
        reply = _Reply(request, self.text, stream=False)
        try:
            reply.stream = bool(one_number(optional_array(request, STREAM), STREAM, 0.0))
            params = self._params(request)
            images = optional_array(request, IMAGE)
            if images is None or images.size != 1:
                raise InvalidRequest(f"{IMAGE}: send one image per request")
            try:
                image = self.images.decode(bytes(images.reshape(-1)[0]), 0)
            except InputItemError as exc:
                raise named(IMAGE, exc) from exc
            ids, question_ids = self._prompt(request, params)
            started = time.perf_counter()
            pixels = self.images(image)[None]
            (embeds,) = self.vision.run([IMAGE_EMBEDS], {PIXEL_VALUES: pixels})
            states = embeds[0]
            if self.question_encoder is not None:
                states = question_states(self.question_encoder, question_ids, embeds)
            self.metrics.observe("encode", time.perf_counter() - started, 1)
        except InvalidRequest as exc:
            reply.invalid(str(exc))
            return
        except Exception as exc:  # unexpected: the log has the traceback, the caller an id
            request_id = request.request_id() or "-"
            logger.exception("%s: admission of request %s failed", self.name, request_id)
            reply.done(None, f"internal error ({type(exc).__name__}); see the server log")
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
