"""Synchronous gRPC client for a vlpserve Triton deployment.

Task-level methods (``embed_texts``, ``embed_images``, ``classify``, ``segment``, BLIP's
``caption``, ``answer``, ``match``) call the raw-level models, so the caller sends texts and
encoded images and gets results back. Every call goes through one gRPC channel and one retry
path (``_attempt``); inputs larger than the server's max_batch_size are split and sent
concurrently; every call has a deadline; failures raise the typed errors of
``vlpserve.errors``. The calls themselves are written once, in ``vlpserve.client.calls``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from vlpserve.client import blip, calls
from vlpserve.client.base import ClientBase, unary, unary_result
from vlpserve.client.calls import Generate, GetConfig, Infer, IsReady, Op, Plan
from vlpserve.client.inputs import ImageInput
from vlpserve.client.replicas import Replica, resolve
from vlpserve.client.segmentation import Segmentation
from vlpserve.contract import embedding_models
from vlpserve.errors import ClientError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Client(ClientBase):
    """Client of a vlpserve Triton server (gRPC).

    Args:
        url: ``host:port`` of Triton's gRPC endpoint; a list of them, or
            ``dns:///name:port`` (every address of a headless Service, resolved again every
            30 s) spreads the calls: each goes to the replica with the fewest in flight, one
            out of reach is ejected (and let back after a health check), and calls fail
            over to another replica (a stream only before its first answer).
        family: family of embed_texts / embed_images / classify / segment (``"clip"``,
            ``"groupvit"``); BLIP's caption, stream_caption, answer and match need none.
        timeout_s: deadline of each call, split requests and streams included.
        retries: how often an UNAVAILABLE answer is retried before ServerUnavailable.
        retry_backoff_s: first wait between retries; it doubles each time.
        max_concurrency: requests in flight at once when a call is split.
        tls, tls_ca, tls_cert, tls_key: gRPC over TLS (``tls_ca``: the CA bundle to trust,
            else the system's; ``tls_cert`` and ``tls_key``: the client's identity).
        api_key: sent as ``triton-grpc-protocol-authorization: Bearer <key>``.
    """

    def __init__(self, url: str | Sequence[str] = "localhost:8001", **options: Any) -> None:
        super().__init__(url, **options)
        self._lock = threading.Lock()
        self._fetching: dict[str, threading.Event] = {}  # configurations being asked for
        self._fetching_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            max_workers=self.options.max_concurrency, thread_name_prefix="vlpserve"
        )

    def _stub(self, replica: Replica) -> Any:
        """The replica's gRPC stub, its channel opened on first use."""
        with self._lock:
            if replica.connection is None:
                options = self._channel_options()
                channel = (
                    grpc.secure_channel(replica.target, self._credentials, options=options)
                    if self._credentials
                    else grpc.insecure_channel(replica.target, options=options)
                )
                replica.connection = (channel, service_pb2_grpc.GRPCInferenceServiceStub(channel))
            return replica.connection[1]

    def _replica(self, tried: set[Replica], deadline: float) -> Replica:
        """The replica for the next try: health-checked first when it was ejected."""
        if self.replicas.resolve_due() and self.replicas.dns:
            try:
                found = resolve(self.replicas.dns)
            except OSError as exc:  # socket.gaierror: the last good addresses stay
                self.replicas.resolution_failed(exc)
                found = []
            for gone in self.replicas.update(found) if found else []:
                if gone.connection is not None and not gone.in_flight:
                    gone.connection[0].close()
        while True:
            replica, check = self.replicas.pick(tried)
            if not check:
                return replica
            try:
                timeout = max(0.001, min(1.0, deadline - time.monotonic()))
                self._stub(replica).ServerReady(
                    pb.ServerReadyRequest(), timeout=timeout, metadata=self._metadata
                )
                self.replicas.succeeded(replica)
                return replica
            except grpc.RpcError:
                self.replicas.failed(replica)
                self.replicas.release(replica)
            except BaseException:  # cancelled meanwhile: the slot is not the caller's yet
                self.replicas.release(replica, check_abandoned=True)
                raise

    # -- carrying plans out -----------------------------------------------------------------

    def _run(self, plan: Plan[T]) -> T:
        """Drive a plan: perform what it yields, send the results back, return its answer."""
        deadline = time.monotonic() + self.options.timeout_s
        value: Any = None
        error: ClientError | None = None
        while True:
            try:
                op = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                if isinstance(op, list):
                    value = list(self._pool.map(lambda o: self._perform(o, deadline), op))
                else:
                    value = self._perform(op, deadline)
                error = None
            except ClientError as exc:
                value, error = None, exc

    def _perform(self, op: Op, deadline: float) -> Any:
        if isinstance(op, Generate):
            texts = blip.Texts(op.what, len(op.requests))
            for _ in self._pieces(op, texts, deadline):
                pass
            return texts.ordered()
        if isinstance(op, GetConfig):
            return self._config(op, deadline)
        return self._unary(op, deadline)

    def _config(self, op: GetConfig, deadline: float) -> Any:
        """A model's configuration, asked for once however many calls want it at once."""
        while (cached := self._cached(op)) is None:
            with self._fetching_lock:
                fetching = self._fetching.get(op.model)
                mine = fetching is None
                if fetching is None:
                    fetching = self._fetching[op.model] = threading.Event()
            if mine:
                try:
                    return self._unary(op, deadline)
                finally:  # on failure, the next waiter asks in turn
                    with self._fetching_lock:
                        del self._fetching[op.model]
                    fetching.set()
            fetching.wait(self._remaining(op, deadline, time.monotonic()))
        return cached

    def _unary(self, op: Infer | GetConfig | IsReady, deadline: float) -> Any:
        attempt, tried = 0, set[Replica]()
        while True:
            timeout = self._remaining(op, deadline, time.monotonic())
            method, request = unary(op, timeout)
            replica = self._replica(tried, deadline)  # counted in flight until released
            try:
                response = getattr(self._stub(replica), method)(
                    request, timeout=timeout, metadata=self._metadata
                )
                return self._remember(op, unary_result(op, response))
            except grpc.RpcError as exc:
                left = deadline - time.monotonic()
                wait, attempt = self._next_try(op, exc, replica, tried, attempt, left)
                time.sleep(wait)
            finally:
                self.replicas.release(replica)

    def _pieces(
        self, op: Generate, texts: blip.Texts, deadline: float
    ) -> Generator[blip.Piece, None, None]:
        """The answers of a stream as they arrive, retried like any call until the first
        answer (never after). Closing the iterator early cancels the requests."""
        attempt, tried = 0, set[Replica]()
        while True:
            timeout = self._remaining(op, deadline, time.monotonic())
            replica = self._replica(tried, deadline)  # counted in flight until released
            call = None
            try:
                call = self._stub(replica).ModelStreamInfer(
                    iter(op.requests), timeout=timeout, metadata=self._metadata
                )
                for message in call:
                    yield texts.add(message)
                    if texts.stop_reading():
                        break
                texts.outcome()
                return
            except grpc.RpcError as exc:
                left = deadline - time.monotonic()
                wait, attempt = self._next_try(
                    op, exc, replica, tried, attempt, left, started=texts.started
                )
                time.sleep(wait)
            finally:
                self.replicas.release(replica)
                if call is not None and not texts.done:
                    call.cancel()

    # -- public API -------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when the server is up and the family's raw-level models are ready."""
        return self._run(calls.ready(self.models))

    def model_config(self, model: str) -> dict[str, Any]:
        """A served model's configuration, as Triton's JSON (cached)."""
        return self._run(calls.config(model))

    def max_batch_size(self, model: str) -> int:
        return calls.batch_size_of(self.model_config(model))

    def models_ready(self, models: Sequence[str]) -> dict[str, bool]:
        """Whether each of ``models`` is served and ready (False where unknown)."""
        return dict(zip(models, self._run(calls.models_ready(list(models))), strict=True))

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the served checkpoint: the temperature of classify()."""
        return self._run(calls.logit_scale(self.models))

    def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One request to any served model at the tensor level (``clip_image_encoder``
        with ``pixel_values``, say): named arrays in, named arrays out (all, or ``outputs``).
        """
        return self._run(calls.infer(model, inputs, outputs))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, one row per text (float32)."""
        return self._run(calls.embed_texts(self.models, texts))

    def embed_texts_and_count(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and each text's token count (as the served tokenizer counts)."""
        return self._run(calls.embed_texts_counted(self.models, texts))

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised image embeddings, one row per image (float32).

        Images may be encoded bytes (JPEG/PNG/WebP/HEIC/AVIF), paths, PIL images or uint8 arrays.
        """
        return self._run(calls.embed_images(self.models, images))

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        template: str = "a photo of a {}",
        family: str | None = None,
    ) -> np.ndarray:
        """Zero-shot classification: probabilities (n_images, n_labels).

        Each label is put into ``template`` and embedded. CLIP and GroupViT: a softmax over
        the labels, softmax(logit_scale * image_embeds @ text_embeds.T) as CLIP's
        logits_per_image, rows sum to 1. SigLIP (``family="siglip"``, here or the client's):
        an independent probability per label, sigmoid(logit_scale * cos + logit_bias), both
        parameters from the served checkpoint, as it was trained; rows need not sum to 1.
        """
        models = self.models if family is None else embedding_models(family)
        return self._run(calls.classify(models, images, labels, template))

    def segment(
        self, image: ImageInput, labels: Sequence[str], *, template: str | None = None
    ) -> Segmentation:
        """Zero-shot segmentation (GroupViT): a label per pixel of the original image.

        Args:
            image: one image (encoded bytes, path, PIL image or uint8 array).
            labels: label texts; each pixel gets the index of one of them.
            template: optional prompt such as ``"a photo of a {}."`` put around each label.
        """
        return self._run(calls.segment(self.models, image, labels, template))

    # -- BLIP ---------------------------------------------------------------------------------

    def caption(
        self,
        images: Sequence[ImageInput],
        *,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
    ) -> list[str]:
        """BLIP captions, one per image, generated server-side (greedy or beam search).

        With a ``prompt`` ("a picture of"), captions continue it and start with it, as
        Hugging Face's BLIP returns them. All images go out together and are decoded in one
        batch on the server.
        """
        requests = blip.caption_requests(
            images,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
        )
        return self._run(calls.generate(requests))

    def stream_caption(
        self,
        image: ImageInput,
        *,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        repetition_penalty: float = 1.0,
    ) -> Iterator[str]:
        """Yield a caption's text pieces as the server generates them (greedy decoding).

        The pieces join into the caption ``caption([image], ...)`` returns. Stopping early
        (``break``, or closing the iterator) cancels the request on the server.
        """
        request = blip.stream_request(
            image, prompt=prompt, max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
        )  # fmt: skip
        return self._stream(request)

    def stream_answer(
        self, image: ImageInput, question: str, *, max_new_tokens: int = 10
    ) -> Iterator[str]:
        """Yield a VQA answer's text pieces as the server generates them (greedy)."""
        return self._stream(
            blip.stream_request(image, question=question, max_new_tokens=max_new_tokens)
        )

    def _stream(self, request: Any) -> Iterator[str]:
        op = Generate([request])
        pieces = self._pieces(op, blip.Texts(op.what, 1), time.monotonic() + self.timeout_s)

        def texts() -> Iterator[str]:
            try:
                yield from (found.text for found in pieces if found.text)
            finally:
                pieces.close()  # cancels the request on the server when left early

        return texts()

    def answer(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        *,
        max_new_tokens: int = 10,
        num_beams: int = 1,
    ) -> list[str]:
        """BLIP VQA: one answer per (image, question) pair."""
        requests = blip.answer_requests(
            images, questions, max_new_tokens=max_new_tokens, num_beams=num_beams
        )
        return self._run(calls.generate(requests))

    def match(
        self, images: Sequence[ImageInput], texts: Sequence[str], *, head: str = "itm"
    ) -> np.ndarray:
        """BLIP image-text matching of (image, text) pairs.

        Args:
            head: ``"itm"`` for the match probability of the ITM head (re-ranking),
                ``"itc"`` for the cosine of the contrastive features (retrieval).
        """
        return self._run(calls.match(images, texts, head))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for replica in self.replicas.replicas:
            if replica.connection is not None:
                replica.connection[0].close()
                replica.connection = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
