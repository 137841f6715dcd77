"""Per-item errors in batches: a bad request batched with good ones gets INVALID_ARGUMENT,
the good ones their own answers (equal to what they get alone), on every raw model. And
the served pre-processor on every image variant the README promises, at the size limit."""

from __future__ import annotations

import asyncio
import io
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vlpserve.client import AsyncClient, Client, InvalidInput


def _counts(url: str, model: str) -> tuple[int, int]:
    """(executions, inferences) Triton has run for ``model``, once they stop changing:
    Triton counts a request a moment after it has answered it."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    previous = None
    for _ in range(20):
        entry = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
        found = int(entry.get("execution_count", 0)), int(entry.get("inference_count", 0))
        if found == previous:
            break
        previous = found
        time.sleep(0.1)
    client.close()
    return found


def _together(url: str, model: str, payloads: list[dict[str, np.ndarray]]) -> list[Any]:
    """Each payload as its own request, all sent at once; results or errors in order."""
    with (
        Client(url, timeout_s=60, max_concurrency=len(payloads)) as client,
        ThreadPoolExecutor(len(payloads)) as pool,
    ):
        futures = [pool.submit(client.infer, model, payload) for payload in payloads]
        return [future.exception() or future.result() for future in futures]


def _alone(url: str, model: str, payload: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with Client(url, timeout_s=60) as client:
        return client.infer(model, payload)


def _rows(*items: bytes) -> np.ndarray:
    return np.array([[item] for item in items], dtype=object)


def _payloads(model: str, photos: dict[str, bytes]) -> tuple[list[dict[str, np.ndarray]], str]:
    """Four requests, the second one bad, and what its error must say."""
    cat, coffee, rocket = photos["chelsea.png"], photos["coffee.png"], photos["rocket.jpg"]
    if model == "clip_text":
        texts = [b"a cat", b"caf\xe9", b"a rocket", b"a cup of coffee"]
        return [{"TEXT": _rows(t)} for t in texts], "TEXT item 0: text is not valid UTF-8"
    if model == "clip_image":
        images = [cat, b"corrupt", rocket, coffee]
        return [{"IMAGE": _rows(i)} for i in images], "IMAGE item 0: cannot decode"
    if model == "groupvit_segment":
        labels = [["cat", "sky"], [], ["rocket", "sky", "grass"], ["cup"]]
        return [
            {"IMAGE": _rows(image), "LABELS": np.array([[x.encode() for x in label]], dtype=object)}
            for image, label in zip([cat, coffee, rocket, coffee], labels, strict=True)
        ], "LABELS is empty"
    if model == "blip_itm":
        pairs = [(cat, b"a cat"), (rocket, b"\xff"), (coffee, b"a cup"), (rocket, b"a rocket")]
        return [
            {"IMAGE": _rows(image), "TEXT": _rows(text)} for image, text in pairs
        ], "TEXT item 0: text is not valid UTF-8"
    raise ValueError(model)


@pytest.mark.parametrize(
    ("model", "stats"),
    [
        ("clip_text", "clip_text"),
        ("clip_image", "clip_image_preprocessor"),
        ("groupvit_segment", "groupvit_segment"),
        ("blip_itm", "blip_itm"),
    ],
)
def test_bad_request_fails_alone_in_its_batch(triton, photos, model: str, stats: str) -> None:
    payloads, message = _payloads(model, photos)
    expected = [_alone(triton.grpc_url, model, p) for i, p in enumerate(payloads) if i != 1]
    before = _counts(triton.grpc_url, stats)
    results = _together(triton.grpc_url, model, payloads)
    after = _counts(triton.grpc_url, stats)
    assert after[1] - before[1] == len(payloads)  # every request reached the model ...
    assert after[0] - before[0] < len(payloads)  # ... in fewer executions: batched together
    assert isinstance(results[1], InvalidInput) and message in str(results[1]), results[1]
    good = [r for i, r in enumerate(results) if i != 1]
    for got, alone in zip(good, expected, strict=True):
        assert isinstance(got, dict), got
        assert set(got) == set(alone)
        for name in got:
            np.testing.assert_allclose(got[name], alone[name], atol=1e-5, err_msg=name)


def test_bad_caption_fails_alone_in_the_decoding_batch(triton, photos) -> None:
    """Captions decoded together in the engine's batch: the bad image's request fails, the
    others get the captions they get alone."""
    from vlpserve.benchmarks.triton_stats import metrics_page, parse_engine_metrics

    images = [photos["chelsea.png"], b"not an image", photos["rocket.jpg"], photos["coffee.png"]]
    good = [image for index, image in enumerate(images) if index != 1]
    with Client(triton.grpc_url, family="blip", timeout_s=120) as client:
        alone = [client.caption([image], max_new_tokens=48)[0] for image in good]

    async def together() -> list[Any]:
        async with AsyncClient(triton.grpc_url, family="blip", timeout_s=120) as client:
            calls = [client.caption([image], max_new_tokens=48) for image in images]
            return await asyncio.gather(*calls, return_exceptions=True)

    def steps() -> tuple[float, float]:
        found = parse_engine_metrics(metrics_page(triton.metrics_url))
        return tuple(found.get(("blip_caption", "step", name), 0.0) for name in ("calls", "rows"))

    before = steps()
    results = asyncio.run(together())
    calls, rows = (after - start for after, start in zip(steps(), before, strict=True))
    assert isinstance(results[1], InvalidInput) and "IMAGE item 0: cannot decode" in str(results[1])
    assert [r for i, r in enumerate(results) if i != 1] == [[caption] for caption in alone]
    assert rows / calls > 1.5  # the good requests were decoded together


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_served_preprocessor_takes_every_variant(triton, photos, reference) -> None:
    """Gray, RGBA, palette, WebP, CMYK and tall images through the served pre-processor,
    as the checkpoint's image processor prepares them."""
    cat = Image.open(io.BytesIO(photos["chelsea.png"]))
    variants = {
        "gray.png": _encode(cat.convert("L"), "PNG"),
        "rgba.png": _encode(cat.convert("RGBA"), "PNG"),
        "palette.png": _encode(cat.convert("P"), "PNG"),
        "cat.webp": _encode(cat, "WEBP", quality=90),
        "cmyk.jpg": _encode(cat.convert("CMYK"), "JPEG"),
        "tall.png": _encode(cat.resize((31, 240)), "PNG"),
        "wide.jpg": _encode(cat.resize((600, 9)), "JPEG"),
    }
    with Client(triton.grpc_url, timeout_s=60) as client:
        for name, data in variants.items():
            served = client.infer("clip_image_preprocessor", {"IMAGE": _rows(data)})
            image = Image.open(io.BytesIO(data))
            theirs = reference.processor(images=image, return_tensors="np")["pixel_values"]
            np.testing.assert_allclose(served["pixel_values"], theirs, atol=1e-6, err_msg=name)


def test_size_limit_at_its_edge(triton) -> None:
    def png(width: int, height: int) -> bytes:
        return _encode(Image.new("RGB", (width, height), "red"), "PNG")

    with Client(triton.grpc_url, timeout_s=60) as client:
        assert client.embed_images([png(8, 8)]).shape == (1, 16)
        for width, height in ((7, 8), (8, 7)):
            with pytest.raises(InvalidInput, match=f"IMAGE item 0: image is {width}x{height}"):
                client.embed_images([png(width, height)])
