"""Python-backend ``blip_caption`` / ``blip_vqa``: generation driven in the server.

Decoupled: ``execute`` hands each request to a small admission pool (decode the image, run
the vision encoder, tokenize the prompt or encode the question) and returns at once; the
generation engine decodes every admitted request in one batch and sends responses as
tokens arrive (``STREAM``) or once at the end. A cancelled request leaves the batch at the
next step. Every request gets exactly one final response: its text, or its error (bad input,
overload, shutdown).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image

from vlpserve.contract import (
    IMAGE_EMBEDS,
    PIXEL_VALUES,
    STREAM_INVALID_INPUT,
    STREAM_OVERLOADED,
    STREAM_STOPPING,
    TEXT,
)
from vlpserve.model_repository.runtime.blip_common import BlipText, load_images, question_states
from vlpserve.model_repository.runtime.device import Device, host_run
from vlpserve.model_repository.runtime.device_images import DeviceImages
from vlpserve.model_repository.runtime.errors import InvalidRequest
from vlpserve.model_repository.runtime.generation import DecoderGraphs, Engine, Job
from vlpserve.model_repository.runtime.inputs import generation_request
from vlpserve.model_repository.runtime.params import BlipGenerateParams
from vlpserve.model_repository.runtime.triton import ModelArgs, PhaseMetrics, request_arrays

logger = logging.getLogger(__name__)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
SHUTTING_DOWN = "the server is shutting down"
# While this file exists the model takes no new request (the launcher drains the server).
DRAIN_FILE = os.environ.get("VLPSERVE_DRAIN_FILE", "")


def _text_response(text: str) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(TEXT, np.array([text.encode("utf-8")], dtype=object))]
    )


class _Reply:
    """Sends one request's responses: pieces while streaming, then exactly one final one
    (``finished`` is told when it has gone)."""

    def __init__(self, request: Any, text: BlipText, finished: Callable[[], None]) -> None:
        self.sender: Any = request.get_response_sender()
        self.text = text
        self.finished = finished
        self.stream = False
        self.ids: list[int] = []  # the prompt, then every generated token
        self.sent = ""
        request_id = request.request_id()
        # Stream errors reach the client without the response id: name the request here.
        self.prefix = f"[request id: {request_id}] " if request_id else ""

    def cancelled(self) -> bool:
        return self.sender is None or bool(self.sender.is_cancelled())

    def tokens(self, tokens: list[int]) -> None:
        self.ids += tokens
        if not self.stream or self.sender is None:
            return
        text = self.text.decode(self.ids)
        if text.startswith(self.sent) and len(text) > len(self.sent):
            self.sender.send(_text_response(text[len(self.sent) :]))
            self.sent = text

    def done(self, ids: list[int] | None, error: str | None) -> None:
        if error is not None:
            cancelled = error == "cancelled"
            code = pb_utils.TritonError.CANCELLED if cancelled else pb_utils.TritonError.INTERNAL
            self._final(
                pb_utils.InferenceResponse(error=pb_utils.TritonError(self.prefix + error, code))
            )
            return
        text = self.text.decode(ids or [])
        if not self.stream:
            self._final(_text_response(text))
        elif text.startswith(self.sent) and len(text) > len(self.sent):
            self._final(_text_response(text[len(self.sent) :]))
        else:  # a final response with an (empty) TEXT: clients need no empty-final flag
            self._final(_text_response(""))

    def refuse(self, prefix: str, message: str, code: Any) -> None:
        """A final error whose text the client recognises (stream errors carry no code)."""
        error = pb_utils.TritonError(self.prefix + prefix + message, code)
        self._final(pb_utils.InferenceResponse(error=error))

    def _final(self, response: Any) -> None:
        sender, self.sender = self.sender, None
        if sender is None:
            return  # already final
        try:
            sender.send(response, flags=FINAL)
        except Exception:  # the client may be gone (cancelled): nothing left to tell it
            logger.info("could not send the final response", exc_info=True)
        finally:
            # The sender holds the model: Triton unloads it (at shutdown too) only once
            # every sender is gone, cancelled requests' included.
            del sender
            self.finished()


class TritonPythonModel:
    """Captioning (prompt optional) or VQA (question required) over BLIP's graphs."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        self.name = model.name
        self.inputs = model.inputs
        folder = model.folder
        self.params = params = model.params(BlipGenerateParams)
        self.text = BlipText(folder.tokenizer_file)
        self.images = load_images(folder.preprocessor_file, params.limits)
        self.vision = model.session(folder.graph("vision_encoder"), params)
        self.device = Device.of(self.vision)
        # Resize, crop and normalise on the host, or on the vision encoder's device.
        self.pixels: Callable[[Image.Image], Any] = (
            DeviceImages(self.images, on_gpu=model.on_gpu, device_id=model.device_id)
            if params.on_device
            else lambda image: self.images(image)[None]
        )
        self.question_encoder = (
            model.session(folder.graph("question_encoder"), params)
            if params.kind == "vqa"
            else None
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
        self.closing = False
        self.lock = threading.Lock()
        self.outstanding = 0  # requests that have not had their final response

    def execute(self, requests: list[Any]) -> None:
        """Hands each request to the admission pool and returns at once. Requests beyond
        ``max_pending`` are refused as overloaded; while the server drains (the launcher
        stops it), new requests are refused as stopping and the others finish."""
        draining = bool(DRAIN_FILE) and os.path.exists(DRAIN_FILE)
        for request in requests:
            with self.lock:
                full = self.outstanding >= self.params.max_pending
                admitted = not (full or draining)
                self.outstanding += admitted
            if not admitted:
                reply = _Reply(request, self.text, lambda: None)
                unavailable = pb_utils.TritonError.UNAVAILABLE
                if draining:
                    stopping = "the server is stopping"
                    self.pool.submit(reply.refuse, STREAM_STOPPING, stopping, unavailable)
                else:
                    waiting = f"{self.params.max_pending} requests are already waiting or decoding"
                    self.pool.submit(reply.refuse, STREAM_OVERLOADED, waiting, unavailable)
                continue
            self.pool.submit(self._admit, request, _Reply(request, self.text, self._finished))
        return None

    def _finished(self) -> None:
        with self.lock:
            self.outstanding -= 1
            count = self.outstanding
        self.metrics.outstanding(count)  # off the lock and off execute's thread: it is IPC

    def _admit(self, request: Any, reply: _Reply) -> None:
        self.metrics.outstanding(self.outstanding)
        if self.closing:
            reply.done(None, SHUTTING_DOWN)
            return
        try:
            parsed = generation_request(
                request_arrays(request, self.inputs),
                kind=self.params.kind,
                encode=self.text.encode,
                steps=self.images,
                bos=self.params.bos_token_id,
                max_length=self.params.max_text_length,
            )
            reply.stream = parsed.stream
            started = time.perf_counter()
            pixels = self.pixels(parsed.image)
            embeds = host_run(self.vision, {PIXEL_VALUES: pixels}, self.device, [IMAGE_EMBEDS])[
                IMAGE_EMBEDS
            ]
            states = embeds[0]
            if self.question_encoder is not None:
                states = question_states(self.question_encoder, parsed.question, embeds)
            self.metrics.observe("encode", time.perf_counter() - started, 1)
        except InvalidRequest as exc:
            reply.refuse(STREAM_INVALID_INPUT, str(exc), pb_utils.TritonError.INVALID_ARG)
            return
        except Exception as exc:  # unexpected: the log has the traceback, the caller an id
            logger.exception("%s: admission of %s failed", self.name, reply.prefix or "a request")
            reply.done(None, f"internal error ({type(exc).__name__}); see the server log")
            return
        reply.ids = list(parsed.prompt)
        self.engine.submit(
            Job(
                prompt=parsed.prompt,
                states=states,
                params=parsed.params,
                on_tokens=reply.tokens,
                on_done=reply.done,
                cancelled=reply.cancelled,
            )
        )

    def finalize(self) -> None:
        """Called when the model is unloaded. Triton does not wait for a decoupled model's
        requests, so the launcher drains generation before it stops the server; what is
        left when the model goes (the grace time spent, or a server stopped another way)
        gets a final error, tried for a moment only: responses may no longer leave then."""
        self.closing = True

        def close() -> None:
            self.pool.shutdown(wait=True)
            self.engine.close(SHUTTING_DOWN)

        closing = threading.Thread(target=close, name="close", daemon=True)
        closing.start()
        closing.join(timeout=2.0)
