"""asyncio gRPC client: the methods of ``Client``, awaitable.

For services written with asyncio: one connection, many calls in flight without threads.
A call split into several requests (more items than the server's max_batch_size) sends
them at once, at most ``max_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import tritonclient.grpc.aio as aio
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

T = TypeVar("T")


class AsyncClient(ClientBase):
    """``Client`` for asyncio: the same arguments and methods, each a coroutine.

    Use it as ``async with AsyncClient(url) as client: await client.embed_texts([...])``.
    Two differences from ``Client``: ``logit_scale`` is a coroutine method
    (``await client.logit_scale()``), and ``stream_caption`` is an async generator.
    The connection is opened on the first call, in the running event loop; use one client
    within one event loop.
    """

    def _open(self) -> None:
        self._grpc: aio.InferenceServerClient | None = None
        self._limit = asyncio.Semaphore(self.max_concurrency)  # binds to a loop on first use

    # -- plumbing ---------------------------------------------------------------------------

    def _connection(self) -> aio.InferenceServerClient:
        if self._grpc is None:
            self._grpc = aio.InferenceServerClient(self.url)
        return self._grpc

    async def _call(
        self,
        what: str,
        fn: Callable[[aio.InferenceServerClient, float], Awaitable[T]],
        *,
        offset: int = 0,
        deadline: float | None = None,
    ) -> T:
        """Await ``fn(client, timeout)`` with retries of UNAVAILABLE and a deadline."""
        loop = asyncio.get_running_loop()
        deadline = deadline or loop.time() + self.timeout_s
        backoff = self.retry_backoff_s
        for attempt in range(self.retries + 1):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise self._expired(what)
            try:
                return await fn(self._connection(), remaining)
            except InferenceServerException as exc:
                error = self._give_up(exc, what, offset, attempt)
                if error is not None:
                    raise error from exc
                logger.info("%s unavailable (attempt %d), retrying", what, attempt + 1)
                await asyncio.sleep(min(backoff, max(0.0, deadline - loop.time())))
                backoff *= 2
        raise AssertionError("unreachable")

    async def _limited(self, call: Awaitable[T]) -> T:
        async with self._limit:
            return await call

    async def model_config(self, model: str) -> dict[str, Any]:
        """A served model's configuration (cached)."""
        if model not in self._configs:

            async def get(client: aio.InferenceServerClient, timeout: float) -> dict[str, Any]:
                found = await client.get_model_config(model, as_json=True, client_timeout=timeout)
                return dict(found["config"])

            self._configs[model] = await self._call(model, get)
        return self._configs[model]

    async def max_batch_size(self, model: str) -> int:
        return int((await self.model_config(model)).get("max_batch_size", 0)) or 1

    async def _infer_chunks(
        self, model: str, count: int, inputs_of: ChunkInputs, output: str
    ) -> np.ndarray:
        """Send ``count`` items in chunks of max_batch_size (``inputs_of(start, size)``),
        at most ``max_concurrency`` at once; stack the chunks' ``output``."""
        size = await self.max_batch_size(model)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        wanted = requested([output])

        async def one(start: int) -> np.ndarray:
            inputs = inputs_of(start, size)

            async def infer(client: aio.InferenceServerClient, timeout: float) -> np.ndarray:
                result = await client.infer(model, inputs, outputs=wanted, client_timeout=timeout)
                return np.asarray(result.as_numpy(output))

            return await self._call(model, infer, offset=start, deadline=deadline)

        starts = range(0, count, size)
        if len(starts) == 1:
            return await one(0)
        parts = await asyncio.gather(*(self._limited(one(start)) for start in starts))
        return np.concatenate(parts)

    async def _infer_bytes(
        self, model: str, name: str, items: list[bytes], output: str
    ) -> np.ndarray:
        """BYTES items, one per row, through ``_infer_chunks``."""
        return await self._infer_chunks(
            model, len(items), lambda start, size: [bytes_input(name, items[start : start + size])],
            output,
        )  # fmt: skip

    # -- public API -------------------------------------------------------------------------

    async def ready(self) -> bool:
        """True when the server is up and the family's raw-level models are ready."""

        async def server(client: aio.InferenceServerClient, timeout: float) -> bool:
            return bool(await client.is_server_ready(client_timeout=timeout))

        try:
            if not await self._call("server", server):
                return False
            for model in (self.models.text.name, self.models.image.name):

                async def ready(
                    client: aio.InferenceServerClient, timeout: float, model: str = model
                ) -> bool:
                    return bool(await client.is_model_ready(model, client_timeout=timeout))

                if not await self._call(model, ready):
                    return False
            return True
        except ClientError:
            return False

    async def logit_scale(self) -> float:
        """exp(logit_scale) of the served checkpoint: the temperature of classify()."""
        model = self.models.text.name
        return logit_scale_of(model, await self.model_config(model))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One tensor-level request to any served model (see ``Client.infer``)."""
        tensors = tensor_inputs(inputs)
        wanted = requested(outputs)

        async def infer(client: aio.InferenceServerClient, timeout: float) -> Any:
            return await client.infer(model, tensors, outputs=wanted, client_timeout=timeout)

        return result_arrays(await self._call(model, infer), outputs)

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, one row per text (float32)."""
        items = texts_to_bytes(texts)
        return await self._infer_bytes(self.models.text.name, TEXT, items, TEXT_EMBEDS)

    async def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised image embeddings, one row per image (float32)."""
        items = images_to_bytes(images)
        return await self._infer_bytes(self.models.image.name, IMAGE, items, IMAGE_EMBEDS)

    async def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        template: str = "a photo of a {}",
    ) -> np.ndarray:
        """Zero-shot classification (see ``Client.classify``); texts and images go at once."""
        prompts = templated(labels, template)
        items = images_to_bytes(images)  # checked before any call
        text, image, scale = await asyncio.gather(
            self.embed_texts(prompts), self.embed_images(items), self.logit_scale()
        )
        return probabilities(scale, image, text)

    async def segment(
        self, image: ImageInput, labels: Sequence[str], *, template: str | None = None
    ) -> Segmentation:
        """Zero-shot segmentation (GroupViT, see ``Client.segment``)."""
        request = segment_request(self.models, image, labels, template)

        async def infer(client: aio.InferenceServerClient, timeout: float) -> Any:
            return await client.infer(
                request.model, request.inputs, outputs=request.outputs, client_timeout=timeout
            )

        return request.result(await self._call(request.model, infer))

    # -- BLIP ---------------------------------------------------------------------------------

    async def caption(
        self,
        images: Sequence[ImageInput],
        *,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
    ) -> list[str]:
        """BLIP captions, one per image (see ``Client.caption``)."""
        requests = blip.caption_requests(
            images,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            repetition_penalty=repetition_penalty,
        )
        return await blip.generate_many_async(
            self._connection(), blip.CAPTION, requests, timeout_s=self.timeout_s
        )

    async def stream_caption(
        self,
        image: ImageInput,
        *,
        prompt: str | None = None,
        max_new_tokens: int = 30,
        repetition_penalty: float = 1.0,
    ) -> AsyncIterator[str]:
        """Yield a caption's text pieces as the server generates them (greedy decoding).

        Leaving the ``async for`` early cancels the request on the server once the generator
        is closed; ``contextlib.aclosing`` closes it at once.
        """
        inputs = blip.stream_request(
            image, prompt=prompt, max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
        )  # fmt: skip
        pieces = blip.stream_one_async(
            self._connection(), blip.CAPTION, inputs, timeout_s=self.timeout_s
        )
        try:
            async for piece in pieces:
                yield piece
        finally:
            await pieces.aclose()

    async def answer(
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
        return await blip.generate_many_async(
            self._connection(), blip.VQA, requests, timeout_s=self.timeout_s
        )

    async def match(
        self, images: Sequence[ImageInput], texts: Sequence[str], *, head: str = "itm"
    ) -> np.ndarray:
        """BLIP image-text matching of (image, text) pairs (see ``Client.match``)."""
        output = match_output(head)
        data = images_to_bytes(images)
        encoded = texts_to_bytes(texts)
        check_pairs(len(data), len(encoded), "texts")
        pairs = functools.partial(blip.match_inputs, data, encoded)  # (start, size) -> inputs
        return (await self._infer_chunks(blip.ITM, len(data), pairs, output)).reshape(-1)

    async def close(self) -> None:
        if self._grpc is not None:
            await self._grpc.close()
            self._grpc = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
