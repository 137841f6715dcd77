"""The OpenAI front door (``vlpserve[openai]``) in the numpy-2 client environment, driven by
the official ``openai`` package, against a server of the main environment."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import numpy as np
import openai
import pytest

from vlpserve.gateway.app import GatewayOptions
from vlpserve.gateway.server import GatewayThread
from vlpserve.serve import free_port


def _url(image: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(image).decode()}"


@pytest.fixture(scope="module")
def api(url: str) -> Iterator[openai.OpenAI]:
    thread = GatewayThread(GatewayOptions(triton=url), "127.0.0.1", free_port()).start()
    yield openai.OpenAI(base_url=thread.url, api_key="unused", max_retries=0)
    thread.stop()


def test_models(api: openai.OpenAI) -> None:
    assert {m.id for m in api.models.list()} == {
        "clip",
        "groupvit",
        "siglip",
        "blip-caption",
        "blip-vqa",
    }


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(api: openai.OpenAI, setting: dict[str, Any], expected, photos, encoding):
    texts, image = setting["texts"], photos[setting["photo_names"][0]]
    found = api.embeddings.create(
        model="clip", input=[*texts, _url(image)], encoding_format=encoding
    )
    if encoding == "base64":
        rows = np.stack([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in found.data])
    else:
        rows = np.array([d.embedding for d in found.data], dtype=np.float32)
    wanted = np.concatenate([expected["clip_texts"], expected["clip_images"][:1]])
    np.testing.assert_allclose(rows, wanted, atol=1e-5)
    assert found.usage.prompt_tokens == int(expected["clip_token_counts"].sum())


def test_chat(api: openai.OpenAI, setting: dict[str, Any], photos) -> None:
    image = photos[setting["photo_names"][0]]
    messages = [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": _url(image)}}]}
    ]
    found = api.chat.completions.create(model="blip-caption", messages=messages, max_tokens=12)
    assert found.choices[0].message.content == setting["captions"][0]
    pieces = api.chat.completions.create(
        model="blip-caption", messages=messages, max_tokens=12, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in pieces) == setting["captions"][0]
