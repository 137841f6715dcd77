"""Deadlines, retries and cancellation, each checked where it acts: a deadline inside the
inference call (not the first metadata call), one deadline shared by a split call's chunks
and by a stream, retries counted and their backoff measured, cancelled generation that
really stops decoding on the server (the engine's own counters say so)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time

import numpy as np
import pytest

from tests.conftest import TEST_MAX_BATCH_SIZE, TEST_QUEUE_DELAY_US
from vlpserve.benchmarks.triton_stats import metrics_page, parse_engine_metrics
from vlpserve.client import AsyncClient, Client, DeadlineExceeded, ServerUnavailable
from vlpserve.serve import free_port

QUEUE_DELAY_S = TEST_QUEUE_DELAY_US / 1e6


FULL = 255  # decoder steps of a 256-token caption (the chelsea photo never meets [SEP])
BATCH = 8  # captions decoded together in the batch tests: 8 rows a step


def _steps(metrics_url: str, name: str = "calls") -> float:
    """Decoder step calls (or rows: ``name="rows"``) the captioning engine made so far."""
    found = parse_engine_metrics(metrics_page(metrics_url))
    return found.get(("blip_caption", "step", name), 0)


@pytest.fixture(scope="module")
def long_caption(triton, photos) -> float:
    """Seconds that 8 captions of 256 tokens, decoded together, take: a request that is not
    stopped makes its 255 decoder steps (8 x 255 rows)."""
    with Client(triton.grpc_url, family="blip", timeout_s=60) as client:
        before = _steps(triton.metrics_url, "rows")
        started = time.monotonic()
        client.caption([photos["chelsea.png"]] * BATCH, max_new_tokens=256)
        took = time.monotonic() - started
    assert _steps(triton.metrics_url, "rows") - before == BATCH * FULL
    return took


def _settled(metrics_url: str, since: float, name: str = "calls") -> float:
    """Steps (or rows) made since ``since``, once the count stopped growing (1 s apart)."""
    time.sleep(1.0)
    first = _steps(metrics_url, name)
    time.sleep(1.0)
    assert _steps(metrics_url, name) == first, "the engine is still decoding a dropped request"
    return first - since


def test_deadline_expires_in_the_inference_call(triton, photos) -> None:
    """``infer`` makes one call, no metadata call: the deadline can only expire in the
    inference call, which Triton holds for its queue delay, so the call must carry it."""
    image = {"IMAGE": np.array([[photos["coffee.png"]]], dtype=object)}
    with Client(triton.grpc_url, timeout_s=60) as client:
        assert client.infer("clip_image", image)["image_embeds"].shape == (1, 16)
    with Client(triton.grpc_url, timeout_s=QUEUE_DELAY_S / 2) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="clip_image"):
            client.infer("clip_image", image)
        assert time.monotonic() - started < QUEUE_DELAY_S


def test_split_call_shares_one_deadline(triton, photos) -> None:
    """Chunks sent one after another share the call's deadline: each fits in it alone,
    eight do not."""
    chunk = [photos["coffee.png"], photos["rocket.jpg"]] * (TEST_MAX_BATCH_SIZE // 2)
    with Client(triton.grpc_url, timeout_s=60, max_concurrency=1) as client:
        client.embed_images(chunk)  # warm up, config cached
        times = []
        for _ in range(3):
            started = time.monotonic()
            client.embed_images(chunk)  # a full chunk runs at once, no queue delay
            times.append(time.monotonic() - started)
    one = sorted(times)[1]
    timeout = 3 * one
    with Client(triton.grpc_url, timeout_s=timeout, max_concurrency=1) as client:
        client.max_batch_size("clip_image")  # the config call is not what expires
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client.embed_images(chunk * 8)
        assert time.monotonic() - started < timeout + one


def test_stream_deadline_stops_the_decoding(triton, photos, long_caption) -> None:
    before = _steps(triton.metrics_url)
    pieces = []
    timeout = long_caption / 8  # about a quarter of one caption's decoding
    with Client(triton.grpc_url, family="blip", timeout_s=timeout) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            for piece in client.stream_caption(photos["chelsea.png"], max_new_tokens=256):
                pieces.append(piece)
        assert time.monotonic() - started < timeout + 0.5
    assert pieces, "the deadline should fall after the first pieces"
    assert _settled(triton.metrics_url, before) < FULL  # stopped short


def test_caption_deadline_stops_the_decoding(triton, photos, long_caption) -> None:
    before = _steps(triton.metrics_url, "rows")
    client = Client(triton.grpc_url, family="blip", timeout_s=long_caption / 4)
    with client, pytest.raises(DeadlineExceeded):
        client.caption([photos["chelsea.png"]] * BATCH, max_new_tokens=256)
    assert _settled(triton.metrics_url, before, "rows") < 0.75 * BATCH * FULL


def test_left_stream_stops_decoding(triton, photos, long_caption) -> None:
    """Closing the iterator after the first piece cancels the request: the engine stops
    its steps within a second (255 without cancellation)."""
    before = _steps(triton.metrics_url)
    with Client(triton.grpc_url, family="blip", timeout_s=60) as client:
        stream = client.stream_caption(photos["chelsea.png"], max_new_tokens=256)
        assert next(stream)
        stream.close()
        assert _settled(triton.metrics_url, before) < 20
        assert client.caption([photos["coffee.png"]], max_new_tokens=5)[0]  # still serving


def test_left_async_stream_stops_decoding(triton, photos, long_caption) -> None:
    before = _steps(triton.metrics_url)

    async def leave_early() -> None:
        async with AsyncClient(triton.grpc_url, family="blip", timeout_s=60) as client:
            stream = client.stream_caption(photos["chelsea.png"], max_new_tokens=256)
            async with contextlib.aclosing(stream):
                async for _ in stream:
                    break

    asyncio.run(leave_early())
    assert _settled(triton.metrics_url, before) < 20


def test_cancelled_async_call_stops_decoding(triton, photos, long_caption) -> None:
    """Cancelling the task of an awaited caption cancels its stream on the server."""
    before = _steps(triton.metrics_url, "rows")

    async def cancel_midway() -> None:
        async with AsyncClient(triton.grpc_url, family="blip", timeout_s=60) as client:
            caption = client.caption([photos["chelsea.png"]] * BATCH, max_new_tokens=256)
            task = asyncio.create_task(caption)
            await asyncio.sleep(long_caption / 4)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(cancel_midway())
    assert _settled(triton.metrics_url, before, "rows") < 0.75 * BATCH * FULL


def _retries(records: list[logging.LogRecord]) -> list[float]:
    """The waits the client logged before each retry."""
    found = [re.search(r"retrying in ([0-9.]+) s", r.getMessage()) for r in records]
    return [float(m.group(1)) for m in found if m]


@pytest.mark.parametrize("retries", [0, 3])
def test_unavailable_is_retried_with_backoff(caplog, retries: int) -> None:
    caplog.set_level(logging.INFO, logger="vlpserve.client")
    backoff = 0.05
    started = time.monotonic()
    client = Client(f"127.0.0.1:{free_port()}", retries=retries, retry_backoff_s=backoff)
    with client, pytest.raises(ServerUnavailable):
        client.embed_texts(["hello"])
    elapsed = time.monotonic() - started
    waits = _retries(caplog.records)
    assert len(waits) == retries
    for attempt, wait in enumerate(waits):  # doubling, with at most 10% jitter
        assert backoff * 2**attempt <= wait <= 1.1 * backoff * 2**attempt + 1e-3
    assert sum(waits) <= elapsed < sum(waits) + 2.0


def test_async_unavailable_is_retried_with_backoff(caplog) -> None:
    caplog.set_level(logging.INFO, logger="vlpserve.client")

    async def call() -> None:
        async with AsyncClient(f"127.0.0.1:{free_port()}", retries=2, retry_backoff_s=0.05) as c:
            await c.embed_texts(["hello"])

    started = time.monotonic()
    with pytest.raises(ServerUnavailable):
        asyncio.run(call())
    waits = _retries(caplog.records)
    assert len(waits) == 2 and waits[1] > waits[0]
    assert time.monotonic() - started >= sum(waits)


def test_retries_stop_at_the_deadline() -> None:
    """A deadline shorter than the backoff ends the retries early, failing fast."""
    started = time.monotonic()
    client = Client(f"127.0.0.1:{free_port()}", retries=10, retry_backoff_s=0.2, timeout_s=0.5)
    with client, pytest.raises((ServerUnavailable, DeadlineExceeded)):
        client.embed_texts(["hello"])
    assert time.monotonic() - started < 1.0


def test_a_stopping_server_refusing_inside_a_stream_is_unavailable() -> None:
    """Triton refusing a stream's request while it shuts down sends its message inside the
    stream, with no status code (seen in CI under SIGTERM): still ServerUnavailable, as the
    same refusal of a unary call is, so that callers go to another replica."""
    from vlpserve.client.blip import stream_error

    refused = stream_error(
        "blip_caption",
        "Server is stopping, scheduler for model has stopped accepting new inference requests",
        0,
    )
    assert isinstance(refused, ServerUnavailable) and "stopping" in str(refused)
