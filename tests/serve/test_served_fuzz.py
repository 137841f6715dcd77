"""A bounded served fuzz run: 2,000 mixed valid and invalid requests over every raw model,
16 at a time. Only OK and INVALID_ARGUMENT may come back (no INTERNAL), and the server is
alive and ready at the end."""

from __future__ import annotations

import asyncio
import collections
import io
import random
from typing import Any

import numpy as np
from PIL import Image

from vlpserve.client import AsyncClient, InvalidInput, calls
from vlpserve.client import blip as blip_requests

REQUESTS = 2_000
FORMATS = [("RGB", "PNG"), ("L", "GIF"), ("RGBA", "PNG"), ("P", "BMP"), ("CMYK", "TIFF")]
FORMATS += [("1", "PNG"), ("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGB", "WEBP")]
CONCURRENCY = 16


def _image(rng: random.Random, photos: list[bytes]) -> bytes:
    """A real photo, a small odd one, or broken bytes."""
    choice = rng.random()
    if choice < 0.5:
        return rng.choice(photos)
    if choice < 0.7:
        size = (rng.randint(1, 64), rng.randint(1, 64))
        mode, fmt = rng.choice(FORMATS)
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, format=fmt)
        return buffer.getvalue()
    data = bytearray(rng.choice(photos))
    for _ in range(rng.randint(1, 20)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data[: rng.randint(0, len(data))])


def _text(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b"a photo of a cat",
            "naïve café 東京 🚀".encode(),
            "שלום עולם e\u0301".encode(),
            b"nul\x00inside",
            b"\xff\xfe not utf-8",
            b"",
            b"x" * rng.choice([10, 1000, 70_000]),
        ]
    )


def _request(rng: random.Random, photos: list[bytes]) -> tuple[str, Any]:
    """(model, what to send): named arrays for a batched model, requests for a stream."""
    kind = rng.choice(["clip_text", "clip_image", "groupvit_segment", "blip_itm", "caption", "vqa"])
    rows = rng.randint(1, 4)
    if kind == "clip_text":
        return kind, {"TEXT": np.array([[_text(rng)] for _ in range(rows)], dtype=object)}
    if kind == "clip_image":
        return kind, {"IMAGE": np.array([[_image(rng, photos)] for _ in range(rows)], dtype=object)}
    if kind == "groupvit_segment":
        labels = [_text(rng)[:50] for _ in range(rng.randint(0, 12))] or []
        return kind, {
            "IMAGE": np.array([[_image(rng, photos)]], dtype=object),
            "LABELS": np.array([labels], dtype=object).reshape(1, -1),
        }
    if kind == "blip_itm":
        return kind, {
            "IMAGE": np.array([[_image(rng, photos)] for _ in range(rows)], dtype=object),
            "TEXT": np.array([[_text(rng)] for _ in range(rows)], dtype=object),
        }
    text = _text(rng).decode("utf-8", errors="replace")
    request = blip_requests.generation_request(
        "blip_caption" if kind == "caption" else "blip_vqa",
        0,
        _image(rng, photos),
        text_name="PROMPT" if kind == "caption" else "QUESTION",
        text=text if (kind == "vqa" or rng.random() < 0.5) else None,
        max_new_tokens=rng.choice([1, 5, 12, 0, 300]),
        num_beams=rng.choice([1, 1, 2, 0, 9]),
        repetition_penalty=rng.choice([1.0, 1.3, 0.0]),
        stream=rng.random() < 0.3,
    )
    return kind, [request]


def test_fuzzed_traffic_gets_only_answers_and_invalid_argument(triton, photos) -> None:
    from vlpserve.serve.supervisor import stubs

    rng = random.Random(20261129)
    samples = list(photos.values())
    restarts, stub_pids = triton.restarts, {s.pid for s in stubs(triton.pid)}
    work = [_request(rng, samples) for _ in range(REQUESTS)]
    outcomes: collections.Counter[str] = collections.Counter()
    unexpected: list[str] = []

    async def one(client: AsyncClient, limit: asyncio.Semaphore, model: str, payload: Any) -> None:
        async with limit:
            try:
                if isinstance(payload, dict):
                    await client.infer(model, payload)
                else:
                    await client._run(calls.generate(payload))
                outcomes["ok"] += 1
            except InvalidInput:
                outcomes["invalid"] += 1
            except Exception as exc:  # anything else is a finding
                outcomes[type(exc).__name__] += 1
                if len(unexpected) < 5:
                    unexpected.append(f"{model}: {exc}")

    async def run() -> bool:
        limit = asyncio.Semaphore(CONCURRENCY)
        async with AsyncClient(triton.grpc_url, timeout_s=120, retries=0) as client:
            await asyncio.gather(*(one(client, limit, m, p) for m, p in work))
            return await client.ready()

    ready = asyncio.run(run())
    assert set(outcomes) <= {"ok", "invalid"}, (outcomes, unexpected)
    assert outcomes["ok"] > REQUESTS / 5 and outcomes["invalid"] > REQUESTS / 5, outcomes
    assert ready and triton.healthy()
    # No stub died on the way (the launcher would have reloaded its model unseen).
    assert triton.restarts == restarts
    assert {s.pid for s in stubs(triton.pid)} == stub_pids
