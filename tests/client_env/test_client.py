"""Every call of ``Client`` and ``AsyncClient`` with numpy 2, against a server of the main
environment: the same answers its numpy-1 client got (rows within float32 rounding, texts and
label maps equal)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from vlpserve.client import AsyncClient, Client, InvalidInput

ATOL = 1e-5  # the same server and inputs: only batch composition may differ


def test_this_is_the_client_environment() -> None:
    import importlib.util

    assert int(np.__version__.split(".")[0]) >= 2, np.__version__
    heavy = ("torch", "transformers", "onnx", "onnxruntime", "pytriton", "tokenizers")
    assert [name for name in heavy if importlib.util.find_spec(name)] == []


def test_embeddings_and_classification(url: str, setting: dict[str, Any], expected, photos):
    texts, names = setting["texts"], setting["photo_names"]
    images = [photos[name] for name in names]
    with Client(url, timeout_s=60) as client:
        np.testing.assert_allclose(client.embed_texts(texts), expected["clip_texts"], atol=ATOL)
        rows, counts = client.embed_texts_and_count(texts)
        np.testing.assert_allclose(rows, expected["clip_texts"], atol=ATOL)
        np.testing.assert_array_equal(counts, expected["clip_token_counts"])
        np.testing.assert_allclose(client.embed_images(images), expected["clip_images"], atol=ATOL)
        probs = client.classify(images, setting["labels"], template="a photo of a {}")
        np.testing.assert_allclose(probs, expected["clip_probs"], atol=ATOL)
        assert client.logit_scale == pytest.approx(float(expected["clip_logit_scale"]))


def test_every_image_input_kind(url: str, setting, expected, photos, tmp_path: Path) -> None:
    """Bytes, a path, a PIL image and a numpy-2 uint8 array give the same row."""
    name = setting["photo_names"][0]
    path = tmp_path / name
    path.write_bytes(photos[name])
    image = Image.open(io.BytesIO(photos[name])).convert("RGB")
    with Client(url, timeout_s=60) as client:
        rows = client.embed_images([photos[name], path, image, np.asarray(image)])
    for row in rows:
        np.testing.assert_allclose(row, expected["clip_images"][0], atol=1e-4)


def test_tensor_level(url: str, expected) -> None:
    with Client(url, timeout_s=60) as client:
        found = client.infer("clip_image_encoder", {"pixel_values": expected["pixels"]})
    assert set(found) == {"image_embeds"} and found["image_embeds"].dtype == np.float32
    np.testing.assert_allclose(found["image_embeds"], expected["pixels_embeds"], atol=ATOL)


def test_segmentation(url: str, setting, expected, photos) -> None:
    with Client(url, family="groupvit", timeout_s=60) as client:
        found = client.segment(photos[setting["photo_names"][1]], setting["labels"])
        texts = client.embed_texts(setting["texts"])
    assert found.label_map.dtype == expected["segment_label_map"].dtype
    np.testing.assert_array_equal(found.label_map, expected["segment_label_map"])
    np.testing.assert_allclose(found.scores, expected["segment_scores"], atol=ATOL)
    np.testing.assert_allclose(found.fractions, expected["segment_fractions"], atol=ATOL)
    np.testing.assert_allclose(texts, expected["groupvit_texts"], atol=ATOL)


def test_siglip_sigmoid(url: str, setting, expected, photos) -> None:
    images = [photos[name] for name in setting["photo_names"]]
    with Client(url, family="siglip", timeout_s=60) as client:
        np.testing.assert_allclose(
            client.embed_texts(setting["texts"]), expected["siglip_texts"], atol=ATOL
        )
        probs = client.classify(images, setting["labels"])
    np.testing.assert_allclose(probs, expected["siglip_probs"], atol=ATOL)


def test_blip(url: str, setting, expected, photos) -> None:
    images = [photos[name] for name in setting["photo_names"]]
    with Client(url, timeout_s=120) as client:
        assert client.caption(images, max_new_tokens=12) == setting["captions"]
        assert (
            "".join(client.stream_caption(images[0], max_new_tokens=12)) == (setting["captions"][0])
        )
        questions = ["what is this?"] * len(images)
        assert client.answer(images, questions, max_new_tokens=6) == setting["answers"]
        scores = client.match(images, setting["labels"][: len(images)])
    np.testing.assert_allclose(scores, expected["match"], atol=1e-4)


def test_errors(url: str, photos) -> None:
    with Client(url, timeout_s=60) as client:
        with pytest.raises(InvalidInput, match="IMAGE"):
            client.embed_images([next(iter(photos.values())), b"not an image"])
        with pytest.raises(TypeError):
            client.embed_texts("a bare string")  # type: ignore[arg-type]


def test_async_client(url: str, setting, expected, photos) -> None:
    texts, images = setting["texts"], [photos[name] for name in setting["photo_names"]]

    async def body() -> tuple[np.ndarray, np.ndarray, str]:
        async with AsyncClient(url, timeout_s=120) as client:
            text, image = await asyncio.gather(
                client.embed_texts(texts), client.embed_images(images)
            )
            pieces = [p async for p in client.stream_caption(images[0], max_new_tokens=12)]
        return text, image, "".join(pieces)

    text, image, caption = asyncio.run(body())
    np.testing.assert_allclose(text, expected["clip_texts"], atol=ATOL)
    np.testing.assert_allclose(image, expected["clip_images"], atol=ATOL)
    assert caption == setting["captions"][0]


def test_replicas(url: str, setting, expected) -> None:
    """Two addresses of the same server: the replica-aware path (least in flight)."""
    with Client([url, url.replace("127.0.0.1", "localhost")], timeout_s=60) as client:
        rows = client.embed_texts(setting["texts"] * 3)
    np.testing.assert_allclose(rows, np.concatenate([expected["clip_texts"]] * 3), atol=ATOL)
