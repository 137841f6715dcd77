"""asyncio gRPC client: the methods of ``Client``, awaitable.

For services written with asyncio: one channel, many calls in flight without threads. The
calls are ``Client``'s (``vlpserve.client.calls``); only the transport differs. A call split
into several requests (more items than the server's max_batch_size) sends them at once, at
most ``max_concurrency`` at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
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
from vlpserve.client.replicas import Replica, addresses, name_of
from vlpserve.client.segmentation import Segmentation
from vlpserve.contract import embedding_models
from vlpserve.errors import ClientError

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _first(group: BaseExceptionGroup[ClientError]) -> ClientError:
    found = group.exceptions[0]
    return found if isinstance(found, ClientError) else _first(found)


class AsyncClient(ClientBase):
    """``Client`` for asyncio: the same arguments and methods, each a coroutine.

    Use it as ``async with AsyncClient(url) as client: await client.embed_texts([...])``.
    Two differences from ``Client``: ``logit_scale`` is a coroutine method
    (``await client.logit_scale()``), and ``stream_caption`` is an async generator.
    The channel is opened on the first call, in the running event loop; use one client
    within one event loop.
    """

    def __init__(self, url: str | Sequence[str] = "localhost:8001", **options: Any) -> None:
        super().__init__(url, **options)
        self._limit = asyncio.Semaphore(self.options.max_concurrency)
        self._fetching: dict[str, asyncio.Future[None]] = {}  # configurations being asked for

    # -- carrying plans out -----------------------------------------------------------------

    def _stub(self, replica: Replica) -> Any:
        """The replica's gRPC stub, its channel opened (in the running loop) on first use."""
        if replica.connection is None:
            options = self._channel_options()
            channel = (
                grpc.aio.secure_channel(replica.target, self._credentials, options=options)
                if self._credentials
                else grpc.aio.insecure_channel(replica.target, options=options)
            )
            replica.connection = (channel, service_pb2_grpc.GRPCInferenceServiceStub(channel))
        return replica.connection[1]

    async def _replica(self, tried: set[Replica], deadline: float) -> Replica:
        """The replica for the next try: health-checked first when it was ejected."""
        loop = asyncio.get_running_loop()
        if self.replicas.resolve_due() and self.replicas.dns:
            host, port = name_of(self.replicas.dns)
            try:
                found = addresses(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            except OSError as exc:  # socket.gaierror: the last good addresses stay
                self.replicas.resolution_failed(exc)
                found = []
            for gone in self.replicas.update(found) if found else []:
                if gone.connection is not None and not gone.in_flight:
                    await gone.connection[0].close()
        while True:
            replica, check = self.replicas.pick(tried)
            if not check:
                return replica
            try:
                timeout = max(0.001, min(1.0, deadline - loop.time()))
                await self._stub(replica).ServerReady(
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

    async def _run(self, plan: Plan[T]) -> T:
        """Drive a plan: perform what it yields, send the results back, return its answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.timeout_s
        value: Any = None
        error: ClientError | None = None
        while True:
            try:
                op = plan.send(value) if error is None else plan.throw(error)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            try:
                if isinstance(op, list) and len(op) == 1:  # no task for a single request
                    value = [await self._perform(op[0], deadline)]
                elif isinstance(op, list):
                    async with asyncio.TaskGroup() as group:
                        tasks = [group.create_task(self._limited(o, deadline)) for o in op]
                    value = [task.result() for task in tasks]
                else:
                    value = await self._perform(op, deadline)
                error = None
            except* ClientError as failed:  # the first failure of the operations
                value, error = None, _first(failed)

    async def _limited(self, op: Op, deadline: float) -> Any:
        async with self._limit:
            return await self._perform(op, deadline)

    async def _perform(self, op: Op, deadline: float) -> Any:
        if isinstance(op, Generate):
            texts = blip.Texts(op.what, len(op.requests))
            async for _ in self._pieces(op, texts, deadline):
                pass
            return texts.ordered()
        if isinstance(op, GetConfig):
            return await self._config(op, deadline)
        return await self._unary(op, deadline)

    async def _config(self, op: GetConfig, deadline: float) -> Any:
        """A model's configuration, asked for once however many calls want it at once."""
        loop = asyncio.get_running_loop()
        while (cached := self._cached(op)) is None:
            fetching = self._fetching.get(op.model)
            if fetching is None:
                fetching = self._fetching[op.model] = loop.create_future()
                try:
                    return await self._unary(op, deadline)
                finally:  # on failure, the next waiter asks in turn
                    del self._fetching[op.model]
                    fetching.set_result(None)
            with contextlib.suppress(TimeoutError):  # the deadline is checked on the next turn
                left = self._remaining(op, deadline, loop.time())
                await asyncio.wait_for(asyncio.shield(fetching), left)
        return cached

    async def _unary(self, op: Infer | GetConfig | IsReady, deadline: float) -> Any:
        loop = asyncio.get_running_loop()
        attempt, tried = 0, set[Replica]()
        while True:
            timeout = self._remaining(op, deadline, loop.time())
            method, request = unary(op, timeout)
            replica = await self._replica(tried, deadline)  # counted in flight until released
            try:
                response = await getattr(self._stub(replica), method)(
                    request, timeout=timeout, metadata=self._metadata
                )
                return self._remember(op, unary_result(op, response))
            except grpc.RpcError as exc:
                left = deadline - loop.time()
                wait, attempt = self._next_try(op, exc, replica, tried, attempt, left)
                await asyncio.sleep(wait)
            finally:
                self.replicas.release(replica)

    async def _pieces(
        self, op: Generate, texts: blip.Texts, deadline: float
    ) -> AsyncGenerator[blip.Piece, None]:
        """The answers of a stream as they arrive, retried like any call until the first
        answer (never after). Leaving early cancels the requests on the server."""
        loop = asyncio.get_running_loop()
        attempt, tried = 0, set[Replica]()
        while True:
            timeout = self._remaining(op, deadline, loop.time())
            replica = await self._replica(tried, deadline)  # counted in flight until released
            call = None
            try:
                call = self._stub(replica).ModelStreamInfer(
                    iter(op.requests), timeout=timeout, metadata=self._metadata
                )
                async for message in call:
                    yield texts.add(message)
                    if texts.stop_reading():
                        break
                texts.outcome()
                return
            except grpc.RpcError as exc:
                left = deadline - loop.time()
                wait, attempt = self._next_try(
                    op, exc, replica, tried, attempt, left, started=texts.started
                )
                await asyncio.sleep(wait)
            finally:
                self.replicas.release(replica)
                if call is not None and not texts.done:
                    call.cancel()

    # -- public API -------------------------------------------------------------------------

    async def ready(self) -> bool:
        """True when the server is up and the family's raw-level models are ready."""
        return await self._run(calls.ready(self.models))

    async def model_config(self, model: str) -> dict[str, Any]:
        """A served model's configuration, as Triton's JSON (cached)."""
        return await self._run(calls.config(model))

    async def max_batch_size(self, model: str) -> int:
        return calls.batch_size_of(await self.model_config(model))

    async def models_ready(self, models: Sequence[str]) -> dict[str, bool]:
        """Whether each of ``models`` is served and ready (False where unknown)."""
        found = await self._run(calls.models_ready(list(models)))
        return dict(zip(models, found, strict=True))

    async def logit_scale(self) -> float:
        """exp(logit_scale) of the served checkpoint: the temperature of classify()."""
        return await self._run(calls.logit_scale(self.models))

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        outputs: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """One tensor-level request to any served model (see ``Client.infer``)."""
        return await self._run(calls.infer(model, inputs, outputs))

    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, one row per text (float32)."""
        return await self._run(calls.embed_texts(self.models, texts))

    async def embed_texts_and_count(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and each text's token count (as the served tokenizer counts)."""
        return await self._run(calls.embed_texts_counted(self.models, texts))

    async def embed_images(self, images: Sequence[ImageInput]) -> np.ndarray:
        """L2-normalised image embeddings, one row per image (float32)."""
        return await self._run(calls.embed_images(self.models, images))

    async def classify(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        template: str = "a photo of a {}",
        family: str | None = None,
    ) -> np.ndarray:
        """Zero-shot classification (see ``Client.classify``); texts and images go at once."""
        models = self.models if family is None else embedding_models(family)
        return await self._run(calls.classify(models, images, labels, template))

    async def segment(
        self, image: ImageInput, labels: Sequence[str], *, template: str | None = None
    ) -> Segmentation:
        """Zero-shot segmentation (GroupViT, see ``Client.segment``)."""
        return await self._run(calls.segment(self.models, image, labels, template))

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
        return await self._run(calls.generate(requests))

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
        request = blip.stream_request(
            image, prompt=prompt, max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
        )  # fmt: skip
        async for piece in self._stream(request):
            yield piece

    async def stream_answer(
        self, image: ImageInput, question: str, *, max_new_tokens: int = 10
    ) -> AsyncIterator[str]:
        """Yield a VQA answer's text pieces as the server generates them (greedy)."""
        request = blip.stream_request(image, question=question, max_new_tokens=max_new_tokens)
        async for piece in self._stream(request):
            yield piece

    async def _stream(self, request: Any) -> AsyncIterator[str]:
        op = Generate([request])
        deadline = asyncio.get_running_loop().time() + self.options.timeout_s
        pieces = self._pieces(op, blip.Texts(op.what, 1), deadline)
        try:
            async for found in pieces:
                if found.text:
                    yield found.text
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
        return await self._run(calls.generate(requests))

    async def match(
        self, images: Sequence[ImageInput], texts: Sequence[str], *, head: str = "itm"
    ) -> np.ndarray:
        """BLIP image-text matching of (image, text) pairs (see ``Client.match``)."""
        return await self._run(calls.match(images, texts, head))

    async def close(self) -> None:
        for replica in self.replicas.replicas:
            if replica.connection is not None:
                await replica.connection[0].close()
                replica.connection = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
