"""AsyncClient against a real tritonserver: the same answers as PyTorch (and as the sync
client where that is already measured against it), many calls on one connection, typed errors."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TEST_MAX_BATCH_SIZE
from vlpserve.client import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    ServerUnavailable,
)
from vlpserve.export.samples import SAMPLE_LABELS, SAMPLE_TEXTS
from vlpserve.serve import free_port

COSINE = 0.9999
T = TypeVar("T")


def run(url: str, body: Callable[[AsyncClient], Awaitable[T]], **options: Any) -> T:
    """``body(client)`` in a fresh event loop, the client closed afterwards."""

    async def main() -> T:
        async with AsyncClient(url, **options) as client:
            return await body(client)

    return asyncio.run(main())


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embeddings_equal_pytorch(triton, reference, photos) -> None:
    texts = [*SAMPLE_TEXTS, "word " * 100]  # more than max_batch_size: split, sent at once
    assert len(texts) > TEST_MAX_BATCH_SIZE
    images = list(photos.values()) * 2

    async def body(client: AsyncClient) -> tuple[bool, np.ndarray, np.ndarray]:
        ready = await client.ready()
        text, image = await asyncio.gather(client.embed_texts(texts), client.embed_images(images))
        return ready, text, image

    ready, text, image = run(triton.grpc_url, body, timeout_s=60)
    assert ready
    assert text.shape == (len(texts), 16) and text.dtype == np.float32
    assert _cosines(text, reference.text_embeds(texts)).min() >= COSINE
    pil = [Image.open(io.BytesIO(b)) for b in images]
    assert _cosines(image, reference.image_embeds(pil)).min() >= COSINE


def test_classify_equals_pytorch_softmax(triton, reference, photos) -> None:
    import torch

    labels = list(SAMPLE_LABELS)

    async def body(client: AsyncClient) -> tuple[np.ndarray, float]:
        return await client.classify(list(photos.values()), labels), await client.logit_scale()

    probs, scale = run(triton.grpc_url, body, timeout_s=60)
    images = [Image.open(io.BytesIO(b)) for b in photos.values()]
    batch = reference.processor(images=images, return_tensors="pt")
    tokens = reference.tokenizer(
        [f"a photo of a {x}" for x in labels], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        logits = reference.model(**tokens, pixel_values=batch["pixel_values"]).logits_per_image
    np.testing.assert_allclose(probs, logits.softmax(dim=-1).numpy(), atol=1e-4)
    assert scale == pytest.approx(float(reference.model.logit_scale.detach().exp()))


def test_many_calls_in_flight_on_one_connection(triton, reference) -> None:
    texts = [f"a photo of {n} cats on a sofa" for n in range(24)]

    async def body(client: AsyncClient) -> list[np.ndarray]:
        return list(await asyncio.gather(*(client.embed_texts([t]) for t in texts)))

    served = np.concatenate(run(triton.grpc_url, body, timeout_s=60))
    assert _cosines(served, reference.text_embeds(texts)).min() >= COSINE


def test_tensor_level_infer_equals_pytorch(triton, reference, photos) -> None:
    """``infer`` sends named arrays to a graph model; both clients give PyTorch's answer."""
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]
    pixels = reference.processor(images=images, return_tensors="np")["pixel_values"]
    pixels = pixels.astype(np.float32)[:TEST_MAX_BATCH_SIZE]
    expected = reference.image_embeds(images[: len(pixels)])

    async def body(client: AsyncClient) -> dict[str, np.ndarray]:
        return await client.infer("clip_image_encoder", {"pixel_values": pixels})

    served = run(triton.grpc_url, body, timeout_s=60)
    assert set(served) == {"image_embeds"}
    assert _cosines(served["image_embeds"], expected).min() >= COSINE
    with Client(triton.grpc_url, timeout_s=60) as client:
        sync = client.infer(
            "clip_image_encoder", {"pixel_values": pixels}, outputs=["image_embeds"]
        )
    np.testing.assert_allclose(sync["image_embeds"], served["image_embeds"], atol=1e-6)


def test_errors_are_typed(triton, photos) -> None:
    good = photos["coffee.png"]

    async def body(client: AsyncClient) -> list[BaseException]:
        caught: list[BaseException] = []
        for call in (
            lambda: client.embed_images([good] * 6 + [b"corrupt"] + [good]),  # split: item 6
            lambda: client.embed_texts("a bare str"),  # type: ignore[arg-type]
            lambda: client.embed_texts([]),
            lambda: client.classify([good], ["cat"], template="no slot"),
            lambda: client.model_config("no_such_model"),
            lambda: client.infer("clip_image_encoder", {"pixel_values": np.zeros((1, 3, 5, 5))}),
        ):
            with pytest.raises(Exception) as info:  # each checked below
                await call()
            caught.append(info.value)
        # the server keeps serving on the same connection
        assert (await client.embed_images([good])).shape[0] == 1
        return caught

    caught = run(triton.grpc_url, body, timeout_s=60)
    assert isinstance(caught[0], InvalidInput) and "IMAGE item 6" in str(caught[0])
    assert isinstance(caught[1], TypeError) and "bare str" in str(caught[1])
    assert isinstance(caught[2], InvalidInput) and "empty" in str(caught[2])
    assert isinstance(caught[3], InvalidInput) and "template" in str(caught[3])
    assert isinstance(caught[4], ModelNotReady)
    assert isinstance(caught[5], InvalidInput)  # float64 where FP32 is declared


def test_deadline_and_unavailable(triton, photos) -> None:
    async def slow(client: AsyncClient) -> Any:
        return await client.embed_images([photos["astronaut.png"]] * 3)

    with pytest.raises(DeadlineExceeded):
        run(triton.grpc_url, slow, timeout_s=0.001)

    async def down(client: AsyncClient) -> bool:
        with pytest.raises(ServerUnavailable):
            await client.embed_texts(["hello"])
        return await client.ready()

    started = time.monotonic()
    assert not run(f"localhost:{free_port()}", down, retries=2, retry_backoff_s=0.05)
    assert time.monotonic() - started < 10


def test_segment_equals_the_sync_client(triton, photos) -> None:
    labels = ["cat", "grass", "sky", "person"]
    image = photos["chelsea.png"]

    async def body(client: AsyncClient) -> Any:
        return await client.segment(image, labels, template="a photo of a {}.")

    served = run(triton.grpc_url, body, family="groupvit", timeout_s=60)
    with Client(triton.grpc_url, family="groupvit", timeout_s=60) as client:
        expected = client.segment(image, labels, template="a photo of a {}.")
    assert served.labels == labels
    np.testing.assert_array_equal(served.label_map, expected.label_map)
    np.testing.assert_allclose(served.scores, expected.scores, atol=1e-6)
    np.testing.assert_allclose(served.fractions, expected.fractions, atol=1e-6)


def test_blip_calls_equal_the_sync_client(triton, photos) -> None:
    """Captions, streamed pieces, answers and match scores: the sync client's, which
    tests/client/test_blip.py measures against Hugging Face."""
    images = list(photos.values())
    questions = ["what is this?", "where is it?", "is it red?", "how many?"]
    texts = ["a cat", "a cup of coffee", "an astronaut", "a rocket"]

    async def body(client: AsyncClient) -> tuple[Any, ...]:
        pieces = [
            p
            async for p in client.stream_caption(images[2], prompt="a picture of", max_new_tokens=8)
        ]
        return (
            await client.caption(images, max_new_tokens=6),
            await client.caption(images[:2], max_new_tokens=6, num_beams=3),
            pieces,
            await client.answer(images, questions, max_new_tokens=4),
            await client.match(images, texts),
            await client.match(images, texts, head="itc"),
        )

    greedy, beams, pieces, answers, itm, itc = run(triton.grpc_url, body, timeout_s=120)
    with Client(triton.grpc_url, family="blip", timeout_s=120) as client:
        assert greedy == client.caption(images, max_new_tokens=6)
        assert beams == client.caption(images[:2], max_new_tokens=6, num_beams=3)
        assert (
            "".join(pieces)
            == client.caption([images[2]], prompt="a picture of", max_new_tokens=8)[0]
        )
        assert answers == client.answer(images, questions, max_new_tokens=4)
        np.testing.assert_allclose(itm, client.match(images, texts), atol=1e-6)
        np.testing.assert_allclose(itc, client.match(images, texts, head="itc"), atol=1e-6)
    assert len(pieces) > 1 and pieces[0].startswith("a picture of")


def test_blip_errors_and_cancelled_stream(triton, photos) -> None:
    good = photos["chelsea.png"]

    async def body(client: AsyncClient) -> str:
        with pytest.raises(InvalidInput, match="IMAGE item 1: cannot decode"):
            await client.caption([good, b"not an image"], max_new_tokens=3)
        with pytest.raises(InvalidInput, match=r"NUM_BEAMS must be in 1\.\.8, got 20"):
            await client.caption([good], num_beams=20)
        with pytest.raises(InvalidInput, match="2 images but 1 questions"):
            await client.answer([good, good], ["why?"])
        async with contextlib.aclosing(
            client.stream_caption(photos["rocket.jpg"], max_new_tokens=256)
        ) as stream:
            async for _ in stream:
                break  # leaving early cancels the request on the server
        started = time.monotonic()
        caption = (await client.caption([photos["coffee.png"]], max_new_tokens=5))[0]
        assert time.monotonic() - started < 30
        return caption

    assert run(triton.grpc_url, body, timeout_s=120)
