"""Synchronous gRPC client for a vlpserve Triton deployment.

Task-level methods (``embed_texts``, ``embed_images``, ``classify``) call the raw-level
models, so the caller sends texts and encoded images and gets embeddings back. Inputs larger
than the server's max_batch_size are split and sent concurrently; every call has a deadline;
UNAVAILABLE is retried with backoff; failures raise the typed errors of ``vlpserve.errors``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from vlpserve.client import blip
from vlpserve.client.calls import (
    ChunkInputs,
    ClientBase,
    bytes_input,
    check_pairs,
    logit_scale_of,
    match_output,
    probabilities,
    requested,
    result_arrays,
    segment_request,
    templated,
    tensor_inputs,
)
from vlpserve.client.inputs import ImageInput, images_to_bytes, texts_to_bytes
from vlpserve.client.segmentation import Segmentation
from vlpserve.contract import IMAGE, IMAGE_EMBEDS, TEXT, TEXT_EMBEDS
from vlpserve.errors import ClientError

logger = logging.getLogger(__name__)


class Client(ClientBase):
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

    def _open(self) -> None:
        self._local = threading.local()
        self._clients: list[grpcclient.InferenceServerClient] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="vlp")

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
                raise self._expired(what)
            try:
                return fn(self._grpc(), remaining)
            except InferenceServerException as exc:
                error = self._give_up(exc, what, offset, attempt)
                if error is not None:
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

    def _infer_chunks(
        self, model: str, count: int, inputs_of: ChunkInputs, output: str
    ) -> np.ndarray:
        """Send ``count`` items in chunks of max_batch_size (``inputs_of(start, size)``),
        concurrently; stack the chunks' ``output``."""
        size = self.max_batch_size(model)
        deadline = time.monotonic() + self.timeout_s
        wanted = requested([output])

        def one(start: int) -> np.ndarray:
            inputs = inputs_of(start, size)

            def infer(client: grpcclient.InferenceServerClient, timeout: float) -> np.ndarray:
                result = client.infer(model, inputs, outputs=wanted, client_timeout=timeout)
                return np.asarray(result.as_numpy(output))

            return self._call(model, infer, offset=start, deadline=deadline)

        starts = list(range(0, count, size))
        if len(starts) == 1:
            return one(0)
        return np.concatenate(list(self._pool.map(one, starts)))

    def _infer_bytes(self, model: str, name: str, items: list[bytes], output: str) -> np.ndarray:
        """BYTES items, one per row, through ``_infer_chunks``."""
        return self._infer_chunks(
            model, len(items), lambda start, size: [bytes_input(name, items[start : start + size])],
            output,
        )  # fmt: skip

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
        model = self.models.text.name
        return logit_scale_of(model, self.model_config(model))

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
        tensors = tensor_inputs(inputs)
        wanted = requested(outputs)

        def infer(client: grpcclient.InferenceServerClient, timeout: float) -> Any:
            return client.infer(model, tensors, outputs=wanted, client_timeout=timeout)

        return result_arrays(self._call(model, infer), outputs)

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
        prompts = templated(labels, template)
        text = self.embed_texts(prompts)
        image = self.embed_images(images)
        return probabilities(self.logit_scale, image, text)

    def segment(
        self, image: ImageInput, labels: Sequence[str], *, template: str | None = None
    ) -> Segmentation:
        """Zero-shot segmentation (GroupViT): a label per pixel of the original image.

        Args:
            image: one image (encoded bytes, path, PIL image or uint8 array).
            labels: label texts; each pixel gets the index of one of them.
            template: optional prompt such as ``"a photo of a {}."`` put around each label.
        """
        request = segment_request(self.models, image, labels, template)

        def infer(client: grpcclient.InferenceServerClient, timeout: float) -> Any:
            return client.infer(
                request.model, request.inputs, outputs=request.outputs, client_timeout=timeout
            )

        return request.result(self._call(request.model, infer))

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
        return blip.generate_many(self.url, blip.CAPTION, requests, timeout_s=self.timeout_s)

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
        inputs = blip.stream_request(
            image, prompt=prompt, max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
        )  # fmt: skip
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
        requests = blip.answer_requests(
            images, questions, max_new_tokens=max_new_tokens, num_beams=num_beams
        )
        return blip.generate_many(self.url, blip.VQA, requests, timeout_s=self.timeout_s)

    def match(
        self, images: Sequence[ImageInput], texts: Sequence[str], *, head: str = "itm"
    ) -> np.ndarray:
        """BLIP image-text matching of (image, text) pairs.

        Args:
            head: ``"itm"`` for the match probability of the ITM head (re-ranking),
                ``"itc"`` for the cosine of the contrastive features (retrieval).
        """
        output = match_output(head)
        data = images_to_bytes(images)
        encoded = texts_to_bytes(texts)
        check_pairs(len(data), len(encoded), "texts")
        pairs = functools.partial(blip.match_inputs, data, encoded)  # (start, size) -> inputs
        return self._infer_chunks(blip.ITM, len(data), pairs, output).reshape(-1)

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
