"""Synchronous gRPC client for a vlpserve Triton deployment.

Task-level methods (``embed_texts``, ``embed_images``, ``classify``) call the raw-level
models, so the caller sends texts and encoded images and gets embeddings back. Inputs larger
than the server's max_batch_size are split and sent concurrently; every call has a deadline;
UNAVAILABLE is retried with backoff; failures raise the typed errors of ``vlpserve.errors``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vlpserve.client import blip
from vlpserve.client.inputs import ImageInput, image_to_bytes, images_to_bytes, texts_to_bytes
from vlpserve.client.segmentation import Segmentation
from vlpserve.contract import (
    FRACTIONS,
    IMAGE,
    IMAGE_EMBEDS,
    ITC_SCORE,
    ITM_SCORE,
    LABEL_MAP,
    LABELS,
    PARAM_LOGIT_SCALE,
    SCORES,
    TEXT,
    TEXT_EMBEDS,
    EmbeddingModels,
    Family,
    embedding_models,
)
from vlpserve.errors import (
    ClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    ServerUnavailable,
)

logger = logging.getLogger(__name__)

_ITEM = re.compile(r"\bitem (\d+)")


def _status(exc: InferenceServerException) -> str:
    return str(exc.status() or "").rsplit(".", 1)[-1]


def translate_error(exc: InferenceServerException, model: str, offset: int = 0) -> ClientError:
    """The typed error for a Triton failure; item numbers shifted by ``offset``."""
    status = _status(exc)
    message = exc.message() or str(exc)
    if offset:
        message = _ITEM.sub(lambda m: f"item {int(m.group(1)) + offset}", message)
    text = f"{model}: {message}"
    if "unknown model" in message or "is not ready" in message or status == "NOT_FOUND":
        return ModelNotReady(text)
    if status == "INVALID_ARGUMENT":
        return InvalidInput(text)
    if status == "DEADLINE_EXCEEDED" or "Deadline Exceeded" in message:
        return DeadlineExceeded(text)
    if status == "UNAVAILABLE":
        return ServerUnavailable(text)
    return ClientError(text)


def _bytes_input(name: str, items: list[bytes]) -> grpcclient.InferInput:
    """A BYTES input of shape (items, 1)."""
    array = np.array(items, dtype=object).reshape(-1, 1)
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(axis=-1, keepdims=True))


class Client:
    """Client of one model family on a Triton server (gRPC).

    Args:
        url: ``host:port`` of Triton's gRPC endpoint.
        family: family of embed_texts / embed_images / classify / segment (``"clip"``,
            ``"groupvit"``); BLIP's caption, stream_caption, answer and match need none.
        timeout_s: deadline of each call, split requests included.
        retries: how often an UNAVAILABLE answer is retried before ServerUnavailable.
        retry_backoff_s: first wait between retries; it doubles each time.
        max_concurrency: requests in flight at once when a call is split.
    """

    def __init__(
        self,
        url: str = "localhost:8001",
        *,
        family: Family | str = Family.CLIP,
        timeout_s: float = 30.0,
        retries: int = 3,
        retry_backoff_s: float = 0.1,
        max_concurrency: int = 8,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        if retries < 0 or max_concurrency < 1:
            raise ValueError("retries must be >= 0 and max_concurrency >= 1")
        self.url = url
        family = Family(family)
        # BLIP calls (caption, answer, match) name their models themselves.
        self.models: EmbeddingModels = embedding_models(
            Family.CLIP if family is Family.BLIP else family
        )
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_backoff_s = retry_backoff_s
        self._local = threading.local()
        self._clients: list[grpcclient.InferenceServerClient] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="vlp")
        self._configs: dict[str, dict[str, Any]] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def _grpc(self) -> grpcclient.InferenceServerClient:
        """One tritonclient per thread: its gRPC stubs are not shared across threads."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = grpcclient.InferenceServerClient(self.url)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _call(self, what: str, fn: Any, *, offset: int = 0, deadline: float | None = None) -> Any:
        """Run ``fn(client, timeout)`` with retries of UNAVAILABLE and a deadline."""
        deadline = deadline or time.monotonic() + self.timeout_s
        backoff = self.retry_backoff_s
        for attempt in range(self.retries + 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{what}: no answer within {self.timeout_s} s")
            try:
                return fn(self._grpc(), remaining)
            except InferenceServerException as exc:
                error = translate_error(exc, what, offset)
                if not isinstance(error, ServerUnavailable) or attempt == self.retries:
                    raise error from exc
                logger.info("%s unavailable (attempt %d), retrying", what, attempt + 1)
                time.sleep(min(backoff, max(0.0, deadline - time.monotonic())))
                backoff *= 2
        raise AssertionError("unreachable")

    def model_config(self, model: str) -> dict[str, Any]:
        """A served model's configuration (cached)."""
        if model not in self._configs:
            self._configs[model] = self._call(
                model,
                lambda c, t: c.get_model_config(model, as_json=True, client_timeout=t)["config"],
            )
        return self._configs[model]

    def max_batch_size(self, model: str) -> int:
        return int(self.model_config(model).get("max_batch_size", 0)) or 1

    def _infer_bytes(self, model: str, name: str, items: list[bytes], output: str) -> np.ndarray:
        """Send BYTES items in chunks of max_batch_size, concurrently; stack the outputs."""
        size = self.max_batch_size(model)
        deadline = time.monotonic() + self.timeout_s

        def one(start: int) -> np.ndarray:
            tensor = _bytes_input(name, items[start : start + size])

            def infer(client: grpcclient.InferenceServerClient, timeout: float) -> np.ndarray:
                result = client.infer(
                    model,
                    [tensor],
                    outputs=[grpcclient.InferRequestedOutput(output)],
                    client_timeout=timeout,
                )
                return np.asarray(result.as_numpy(output))

            return self._call(model, infer, offset=start, deadline=deadline)

        starts = list(range(0, len(items), size))
        if len(starts) == 1:
            return one(0)
        return np.concatenate(list(self._pool.map(one, starts)))

    # -- public API -------------------------------------------------------------------------

    def ready(self) -> bool:
        """True when the server is up and the family's raw-level models are ready."""
        try:
            return bool(
                self._call("server", lambda c, t: c.is_server_ready(client_timeout=t))
                and all(
                    self._call(m, lambda c, t, m=m: c.is_model_ready(m, client_timeout=t))
                    for m in (self.models.text.name, self.models.image.name)
                )
            )
        except ClientError:
            return False

    @property
    def logit_scale(self) -> float:
        """exp(logit_scale) of the served checkpoint: the temperature of classify()."""
        parameters = self.model_config(self.models.text.name).get("parameters", {})
        try:
            return float(parameters[PARAM_LOGIT_SCALE]["string_value"])
        except (KeyError, ValueError) as exc:
            raise ModelNotReady(f"{self.models.text.name} has no {PARAM_LOGIT_SCALE}") from exc

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, one row per text (float32)."""
        return self._infer_bytes(self.models.text.name, TEXT, texts_to_bytes(texts), TEXT_EMBEDS)

    def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised image embeddings, one row per image (float32).

        Images may be encoded bytes (JPEG/PNG/WebP), paths, PIL images or uint8 arrays.
        """
        return self._infer_bytes(
            self.models.image.name, IMAGE, images_to_bytes(images), IMAGE_EMBEDS
        )

    def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        template: str = "a photo of a {}",
    ) -> np.ndarray:
        """Zero-shot classification: probabilities (n_images, n_labels), rows sum to 1.

        Each label is put into ``template`` and embedded; probabilities are
        softmax(logit_scale * image_embeds @ text_embeds.T), as CLIP's logits_per_image.
        """
        if "{}" not in template:
            raise InvalidInput("template must contain '{}' where the label goes")
        texts_to_bytes(labels, "labels")  # a non-empty list of str, checked before any call
        prompts = [template.format(label) for label in labels]
        text = self.embed_texts(prompts)
        image = self.embed_images(images)
        return softmax(self.logit_scale * image.astype(np.float64) @ text.T.astype(np.float64))

    def segment(
        self, image: ImageInput, labels: Sequence[str], *, template: str | None = None
    ) -> Segmentation:
        """Zero-shot segmentation (GroupViT): a label per pixel of the original image.

        Args:
            image: one image (encoded bytes, path, PIL image or uint8 array).
            labels: label texts; each pixel gets the index of one of them.
            template: optional prompt such as ``"a photo of a {}."`` put around each label.
        """
        if self.models.family is not Family.GROUPVIT:
            raise InvalidInput(f"segment needs a GroupViT server, this client is {self.family}")
        texts = texts_to_bytes(labels, "labels")
        if template is not None:
            if "{}" not in template:
                raise InvalidInput("template must contain '{}' where the label goes")
            texts = [template.format(label).encode() for label in labels]
        data = image_to_bytes(image, 0)
        model = self.models.segment.name
        image_tensor = grpcclient.InferInput(IMAGE, [1, 1], "BYTES")
        image_tensor.set_data_from_numpy(np.array([[data]], dtype=object))
        label_tensor = grpcclient.InferInput(LABELS, [1, len(texts)], "BYTES")
        label_tensor.set_data_from_numpy(np.array([texts], dtype=object))
        outputs = [grpcclient.InferRequestedOutput(n) for n in (LABEL_MAP, SCORES, FRACTIONS)]

        def infer(client: grpcclient.InferenceServerClient, timeout: float) -> Any:
            return client.infer(
                model, [image_tensor, label_tensor], outputs=outputs, client_timeout=timeout
            )

        result = self._call(model, infer)
        return Segmentation(
            label_map=np.asarray(result.as_numpy(LABEL_MAP))[0],
            labels=list(labels),
            scores=np.asarray(result.as_numpy(SCORES))[0],
            fractions=np.asarray(result.as_numpy(FRACTIONS))[0],
            image=data,
        )

    @property
    def family(self) -> str:
        return self.models.family.value

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
        blip.check_generation(max_new_tokens, num_beams, repetition_penalty)
        return blip.generate_many(
            self.url,
            blip.CAPTION,
            [
                blip.generation_inputs(
                    data,
                    text_name=blip.PROMPT,
                    text=prompt,
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                    repetition_penalty=repetition_penalty,
                    stream=False,
                )
                for data in images_to_bytes(images)
            ],
            timeout_s=self.timeout_s,
        )

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
        blip.check_generation(max_new_tokens, 1, repetition_penalty)
        inputs = blip.generation_inputs(
            image_to_bytes(image, 0),
            text_name=blip.PROMPT,
            text=prompt,
            max_new_tokens=max_new_tokens,
            num_beams=1,
            repetition_penalty=repetition_penalty,
            stream=True,
        )
        return blip.stream_one(self.url, blip.CAPTION, inputs, timeout_s=self.timeout_s)

    def answer(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        *,
        max_new_tokens: int = 10,
        num_beams: int = 1,
    ) -> list[str]:
        """BLIP VQA: one answer per (image, question) pair."""
        blip.check_generation(max_new_tokens, num_beams, 1.0)
        data = images_to_bytes(images)
        texts = texts_to_bytes(questions, "questions")
        if len(data) != len(texts):
            raise InvalidInput(f"{len(data)} images but {len(texts)} questions: give pairs")
        return blip.generate_many(
            self.url,
            blip.VQA,
            [
                blip.generation_inputs(
                    image,
                    text_name=blip.QUESTION,
                    text=question.decode("utf-8"),
                    max_new_tokens=max_new_tokens,
                    num_beams=num_beams,
                    repetition_penalty=1.0,
                    stream=False,
                )
                for image, question in zip(data, texts, strict=True)
            ],
            timeout_s=self.timeout_s,
        )

    def match(
        self, images: Sequence[ImageInput], texts: Sequence[str], *, head: str = "itm"
    ) -> np.ndarray:
        """BLIP image-text matching of (image, text) pairs.

        Args:
            head: ``"itm"`` for the match probability of the ITM head (re-ranking),
                ``"itc"`` for the cosine of the contrastive features (retrieval).
        """
        if head not in ("itm", "itc"):
            raise InvalidInput(f"head must be 'itm' or 'itc', got {head!r}")
        data = images_to_bytes(images)
        encoded = texts_to_bytes(texts)
        if len(data) != len(encoded):
            raise InvalidInput(f"{len(data)} images but {len(encoded)} texts: give pairs")
        size = self.max_batch_size(blip.ITM)
        output = ITM_SCORE if head == "itm" else ITC_SCORE
        deadline = time.monotonic() + self.timeout_s

        def one(start: int) -> np.ndarray:
            pairs = [
                _bytes_input(IMAGE, data[start : start + size]),
                _bytes_input(TEXT, encoded[start : start + size]),
            ]

            def infer(client: grpcclient.InferenceServerClient, timeout: float) -> np.ndarray:
                result = client.infer(blip.ITM, pairs, client_timeout=timeout)
                return np.asarray(result.as_numpy(output)).reshape(-1)

            return self._call(blip.ITM, infer, offset=start, deadline=deadline)

        return np.concatenate(list(self._pool.map(one, range(0, len(data), size))))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            for client in self._clients:
                client.close()
            self._clients.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
