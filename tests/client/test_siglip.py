"""SigLIP and SigLIP 2 served end to end: embeddings and sigmoid probabilities equal Hugging
Face's, through the sync and asyncio clients, the tensor level and the OpenAI front door."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpserve.client import AsyncClient, Client, InvalidInput
from vlpserve.export import ExportOptions, export, hf
from vlpserve.export.siglip_checkpoints import build_siglip
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.serve import TritonServer

COSINE = 0.9999
TEXTS = ["a photo of a cat", "A ROCKET, on the launch pad!", "", "two dogs in the snow"]
LABELS = ["cat", "cup of coffee", "astronaut", "rocket"]


class Reference:
    """Hugging Face SiglipModel in process, with the checkpoint's tokenizer and processor."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import AutoTokenizer, SiglipModel

        self.model = SiglipModel.from_pretrained(checkpoint).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.processor = hf.image_processor(checkpoint)

    def texts(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = self.tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_text_features(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            )
        return torch.nn.functional.normalize(hf.features(out), dim=-1).numpy()

    def images(self, images: list[Image.Image]) -> np.ndarray:
        import torch

        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model.get_image_features(pixel_values=pixels)
        return torch.nn.functional.normalize(hf.features(out), dim=-1).numpy()

    def probabilities(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        """sigmoid(logits_per_image), as SiglipModel's forward computes it."""
        import torch

        batch = self.tokenizer(texts, padding="max_length", max_length=64, return_tensors="pt")
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = self.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                pixel_values=pixels,
            )
        return torch.sigmoid(out.logits_per_image).numpy()


@pytest.fixture(scope="module", params=[1, 2], ids=["siglip", "siglip2"])
def served(request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Reference]]:
    """SigLIP from the session's repository (beside the other families); SigLIP 2 (the same
    model names) from a server of its own."""
    if request.param == 1:
        triton = request.getfixturevalue("triton")
        yield triton.grpc_url, Reference(request.getfixturevalue("siglip_checkpoint"))
        return
    folder = tmp_path_factory.mktemp(f"served-siglip{request.param}")
    checkpoint = build_siglip(folder / "checkpoint", version=request.param)
    export("siglip", ExportOptions(model=str(checkpoint), out=folder / "export"))
    repo = folder / "repo"
    build_repository(RepositoryOptions(export_dir=folder / "export", out=repo, max_batch_size=4))
    with TritonServer(repo) as server:
        yield server.grpc_url, Reference(checkpoint)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_embeddings_equal_hugging_face(served, photos) -> None:
    url, reference = served
    images = [Image.open(io.BytesIO(data)).convert("RGB") for data in photos.values()]
    with Client(url, family="siglip", timeout_s=60) as client:
        texts = client.embed_texts(TEXTS)  # more than max_batch_size: split, padded to 64 each
        pictures = client.embed_images(list(photos.values()))
    assert _cosines(texts, reference.texts(TEXTS)).min() >= COSINE
    assert _cosines(pictures, reference.images(images)).min() >= COSINE


def test_classify_is_independent_sigmoids(served, photos) -> None:
    url, reference = served
    data = list(photos.values())
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in data]
    prompts = [f"a photo of a {label}" for label in LABELS]
    with Client(url, family="siglip", timeout_s=60) as client:
        probs = client.classify(data, LABELS)
    expected = reference.probabilities(images, prompts)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert not np.allclose(probs.sum(axis=1), 1.0)  # not a softmax
    with Client(url, timeout_s=60) as client:  # a CLIP client, asking for SigLIP per call
        np.testing.assert_allclose(client.classify(data, LABELS, family="siglip"), probs, atol=1e-6)


def test_tensor_level_and_async(served, photos) -> None:
    url, reference = served
    ids = reference.tokenizer(TEXTS[:2], padding="max_length", max_length=64, return_tensors="np")
    feeds = {
        "input_ids": ids["input_ids"].astype(np.int64),
        "attention_mask": ids["attention_mask"],
    }

    async def body() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        async with AsyncClient(url, family="siglip", timeout_s=60) as client:
            texts, probs = await asyncio.gather(
                client.embed_texts(TEXTS[:2]), client.classify([photos["rocket.jpg"]], LABELS)
            )
            tensor = await client.infer("siglip_text_encoder", feeds)
        return texts, probs, tensor

    texts, probs, tensor = asyncio.run(body())
    assert _cosines(tensor["text_embeds"], reference.texts(TEXTS[:2])).min() >= COSINE
    np.testing.assert_allclose(texts, tensor["text_embeds"], atol=1e-5)
    image = Image.open(io.BytesIO(photos["rocket.jpg"])).convert("RGB")
    prompts = [f"a photo of a {label}" for label in LABELS]
    np.testing.assert_allclose(probs, reference.probabilities([image], prompts), atol=1e-4)


def test_bad_input_is_named(served) -> None:
    url, _ = served
    with (
        Client(url, family="siglip", timeout_s=60) as client,
        pytest.raises(InvalidInput, match="IMAGE"),
    ):
        client.embed_images([b"not an image"])


def test_front_door_serves_siglip(served, photos) -> None:
    import openai

    from vlpserve.gateway.app import GatewayOptions
    from vlpserve.gateway.server import GatewayThread
    from vlpserve.serve import free_port

    url, reference = served
    gateway = GatewayThread(GatewayOptions(triton=url), "127.0.0.1", free_port()).start()
    try:
        api = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0)
        assert "siglip" in {m.id for m in api.models.list()}
        image = photos["coffee.png"]
        found = api.embeddings.create(
            model="siglip",
            input=[TEXTS[0], f"data:image/png;base64,{base64.b64encode(image).decode()}"],
        )
    finally:
        gateway.stop()
    rows = np.array([d.embedding for d in found.data], dtype=np.float32)  # the SDK decoded
    expected = np.concatenate(
        [
            reference.texts(TEXTS[:1]),
            reference.images([Image.open(io.BytesIO(image)).convert("RGB")]),
        ]
    )
    assert _cosines(rows, expected).min() >= COSINE
