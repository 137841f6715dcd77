"""The OpenAI front door, tested with the official ``openai`` package (sync and async,
streaming included) against the real stack: the front door over a real tritonserver."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from vlpserve.client import Client
from vlpserve.gateway.app import GatewayOptions
from vlpserve.gateway.server import GatewayThread
from vlpserve.serve import free_port

COSINE = 0.99999


def _url(image: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64,{base64.b64encode(image).decode()}"


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def gateway(triton) -> Iterator[GatewayThread]:
    thread = GatewayThread(GatewayOptions(triton=triton.grpc_url), "127.0.0.1", free_port())
    yield thread.start()
    thread.stop()


@pytest.fixture(scope="module")
def api(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)


def test_models_lists_what_is_served(api) -> None:
    assert {m.id for m in api.models.list()} == {
        "clip",
        "groupvit",
        "siglip",
        "blip-caption",
        "blip-vqa",
    }


@pytest.mark.parametrize("family", ["clip", "groupvit"])
@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings_equal_the_grpc_client(api, triton, photos, family, encoding) -> None:
    texts = ["a photo of a cat", "Two dogs running across a snowy field at sunset!", ""]
    images = list(photos.values())
    mixed = [texts[0], _url(images[0]), texts[1], _url(images[3], "jpeg"), texts[2]]
    found = api.embeddings.create(model=family, input=mixed, encoding_format=encoding)
    if encoding == "base64":  # asked for, it is passed on as is: little-endian float32
        rows = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in found.data])
    else:
        rows = np.array([item.embedding for item in found.data], dtype=np.float32)
    assert [item.index for item in found.data] == list(range(len(mixed)))
    with Client(triton.grpc_url, family=family, timeout_s=60) as client:
        text = client.embed_texts(texts)
        image = client.embed_images([images[0], images[3]])
        tokens = sum(
            int(
                client.infer(
                    f"{family}_tokenizer", {"TEXT": np.array([[t.encode()]], dtype=object)}
                )["attention_mask"].sum()
            )
            for t in texts
        )
    expected = np.stack([text[0], image[0], text[1], image[1], text[2]])
    assert _cosines(rows, expected).min() >= COSINE
    assert found.usage.prompt_tokens == tokens and found.usage.total_tokens == tokens
    one = api.embeddings.create(model=family, input="a photo of a cat")  # a bare string
    assert len(one.data) == 1 and _cosines(np.array([one.data[0].embedding]), text[:1])[0] >= COSINE


def test_async_embeddings(gateway, triton, photos) -> None:
    async def body() -> list[list[float]]:
        client = openai.AsyncOpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
        answers = await asyncio.gather(
            *(client.embeddings.create(model="clip", input=[f"text {i}"]) for i in range(8))
        )
        await client.close()
        return [a.data[0].embedding for a in answers]

    rows = np.array(asyncio.run(body()), dtype=np.float32)
    with Client(triton.grpc_url, timeout_s=60) as client:
        expected = client.embed_texts([f"text {i}" for i in range(8)])
    assert _cosines(rows, expected).min() >= COSINE


def _chat(image: bytes, text: str | None = None) -> list[dict]:
    parts: list[dict] = [{"type": "image_url", "image_url": {"url": _url(image)}}]
    if text is not None:
        parts.insert(0, {"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


def test_chat_captions_and_answers_equal_the_grpc_client(api, triton, photos) -> None:
    image = photos["astronaut.png"]
    with Client(triton.grpc_url, family="blip", timeout_s=120) as client:
        caption = client.caption([image], prompt="a picture of", max_new_tokens=12)[0]
        plain = client.caption([image], max_new_tokens=30)[0]
        answer = client.answer([image], ["what is this?"], max_new_tokens=6)[0]
    found = api.chat.completions.create(
        model="blip-caption", messages=_chat(image, "a picture of"), max_tokens=12
    )
    assert found.choices[0].message.content == caption
    assert found.choices[0].finish_reason == "stop" and found.object == "chat.completion"
    default = api.chat.completions.create(model="blip-caption", messages=_chat(image))
    assert default.choices[0].message.content == plain
    found = api.chat.completions.create(
        model="blip-vqa", messages=_chat(image, "what is this?"), max_completion_tokens=6
    )
    assert found.choices[0].message.content == answer
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in api.chat.completions.create(
            model="blip-caption", messages=_chat(image, "a picture of"), max_tokens=12, stream=True
        )
    ]
    assert len(pieces) > 2 and "".join(pieces) == caption

    async def streamed() -> str:
        client = openai.AsyncOpenAI(base_url=api.base_url, api_key="unused", max_retries=0)
        stream = await client.chat.completions.create(
            model="blip-vqa", messages=_chat(image, "what is this?"), max_tokens=6, stream=True
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
        await client.close()
        return text

    assert asyncio.run(streamed()) == answer


def _status(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as info:
        call()
    return info.value


def test_errors_in_openai_form(api, photos) -> None:
    image = photos["coffee.png"]
    bad = _status(
        lambda: api.embeddings.create(model="clip", input=["fine", _url(b"not an image")])
    )
    assert bad.status_code == 400 and "input[1]" in bad.message and "cannot decode" in bad.message
    remote = _status(
        lambda: api.embeddings.create(model="clip", input=["http://example.com/a.png"])
    )
    assert remote.status_code == 400 and "remote URLs are refused" in remote.message
    assert _status(lambda: api.embeddings.create(model="nope", input=["x"])).status_code == 404
    assert (
        _status(lambda: api.embeddings.create(model="blip-caption", input=["x"])).status_code == 400
    )
    wide = _status(lambda: api.embeddings.create(model="clip", input=["x"], dimensions=7))
    assert wide.status_code == 400 and "dimensions" in wide.message
    for field, extra in (
        ("n", {"n": 2}),
        ("temperature", {"temperature": 0.7}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "f"}}]}),
        ("top_p", {"top_p": 0.5}),
    ):
        refused = _status(
            lambda extra=extra: api.chat.completions.create(
                model="blip-caption", messages=_chat(image), **extra
            )
        )
        assert refused.status_code == 400 and field in refused.message, field
    two = [{"role": "user", "content": [*_chat(image)[0]["content"], *_chat(image)[0]["content"]]}]
    several = _status(lambda: api.chat.completions.create(model="blip-caption", messages=two))
    assert several.status_code == 400 and "exactly one image" in several.message
    bad_image = _status(
        lambda: api.chat.completions.create(model="blip-caption", messages=_chat(b"garbage"))
    )
    assert bad_image.status_code == 400 and "cannot decode" in bad_image.message
    missing = _status(lambda: api.chat.completions.create(model="blip-vqa", messages=_chat(image)))
    assert missing.status_code == 400 and "question" in missing.message


def test_keys_sizes_and_a_missing_server(triton, tmp_path: Path) -> None:
    keyed = GatewayThread(
        GatewayOptions(triton=triton.grpc_url, api_key="k-123", max_body_bytes=10_000),
        "127.0.0.1",
        free_port(),
    ).start()
    down = GatewayThread(
        GatewayOptions(triton=f"127.0.0.1:{free_port()}", timeout_s=2), "127.0.0.1", free_port()
    ).start()
    try:
        wrong = openai.OpenAI(base_url=keyed.url, api_key="wrong", max_retries=0)
        refused = _status(lambda: wrong.embeddings.create(model="clip", input=["x"]))
        assert refused.status_code == 401 and "k-123" not in refused.message
        request = urllib.request.Request(
            f"{keyed.url}/embeddings",
            data=json.dumps({"model": "clip", "input": ["x"]}).encode(),
            headers={"content-type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as missing:  # no Authorization header
            urllib.request.urlopen(request, timeout=10)
        assert missing.value.code == 401
        assert json.loads(missing.value.read())["error"]["code"] == "invalid_api_key"
        api = openai.OpenAI(base_url=keyed.url, api_key="k-123", max_retries=0)
        assert len(api.embeddings.create(model="clip", input=["x"]).data) == 1
        big = _status(lambda: api.embeddings.create(model="clip", input=["x" * 20_000]))
        assert big.status_code == 413
        dead = openai.OpenAI(base_url=down.url, api_key="x", max_retries=0)
        assert _status(lambda: dead.embeddings.create(model="clip", input=["x"])).status_code == 503
    finally:
        keyed.stop()
        down.stop()
