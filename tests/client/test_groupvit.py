"""GroupViT served end to end: segmentation equals Hugging Face's, bad input is isolated."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TEST_MAX_LABELS
from vlpserve.client import Client, InvalidInput, Segmentation
from vlpserve.model_repository.runtime.segmentation import segment_logits

LABEL_SETS = [
    ["cat", "grass", "sky", "person", "dog", "a red car", "tree", "water"],
    ["coffee", "table", "astronaut", "rocket"],
]


@pytest.fixture(scope="module")
def client(triton):
    with Client(triton.grpc_url, family="groupvit", timeout_s=60) as client:
        yield client


def _hf_segmentation(reference, image: Image.Image, labels: list[str]):
    """HF's segmentation_logits for the whole image resized to 224x224, and its label map
    at the original size (logits resized bilinearly, then argmax)."""
    import torch

    pixels = reference.processor(
        images=image.resize((224, 224), resample=Image.BICUBIC),
        do_resize=False,
        do_center_crop=False,
        return_tensors="pt",
    )["pixel_values"]
    tokens = reference.tokenizer(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = reference.model(**tokens, pixel_values=pixels, output_segmentation=True)
    logits = out.segmentation_logits
    resized = torch.nn.functional.interpolate(
        logits, size=(image.height, image.width), mode="bilinear", align_corners=False
    )
    probs = out.logits_per_image.softmax(dim=-1)[0].numpy()
    return logits[0].numpy(), resized[0].argmax(0).numpy(), probs, pixels.numpy()


@pytest.mark.parametrize("labels", LABEL_SETS)
def test_segmentation_equals_hugging_face(client: Client, groupvit_reference, photos, labels):
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(client.url)
    distinct = 0
    for name, data in photos.items():
        image = Image.open(io.BytesIO(data)).convert("RGB")
        seg = client.segment(data, labels)
        hf_logits, hf_map, hf_probs, pixels = _hf_segmentation(groupvit_reference, image, labels)
        assert seg.label_map.shape == (image.height, image.width), name
        assert seg.label_map.dtype == np.int32
        agreement = float((seg.label_map == hf_map).mean())
        assert agreement >= 0.999, f"{name}: {agreement:.5f} of pixels agree"
        np.testing.assert_allclose(seg.scores, hf_probs, atol=1e-4)
        assert seg.fractions.sum() == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(
            seg.fractions, np.bincount(hf_map.ravel(), minlength=len(labels)) / hf_map.size,
            atol=1e-3,
        )  # fmt: skip
        distinct += len(np.unique(seg.label_map)) > 1
        # Logits: the served graphs' outputs through the server's post-processing vs HF.
        tensor = grpcclient.InferInput("pixel_values", list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        encoded = raw.infer("groupvit_image_encoder", [tensor])
        texts = client.embed_texts(labels)
        ours = segment_logits(
            encoded.as_numpy("group_embeds")[0],
            encoded.as_numpy("grouping")[0],
            texts,
            client.logit_scale,
            (224, 224),
        )
        diff = float(np.abs(ours - hf_logits).max())
        print(f"{name}: logits max abs diff {diff:.2e}, label agreement {agreement:.5f}")
        assert diff < 1e-2 * max(1.0, float(np.abs(hf_logits).max()))
    assert distinct > 0, "every label map is a single label: the test would prove nothing"


def test_embeddings_equal_hugging_face(client: Client, groupvit_reference, photos) -> None:
    texts = ["a photo of a cat", "grass", ""]
    served = client.embed_texts(texts)
    expected = groupvit_reference.text_embeds(texts)
    assert np.sum(served * expected, axis=1).min() >= 0.9999
    images = [Image.open(io.BytesIO(b)) for b in photos.values()]
    served = client.embed_images(list(photos.values()))
    expected = groupvit_reference.image_embeds(images)
    assert np.sum(served * expected, axis=1).min() >= 0.9999


def test_template_and_overlay(client: Client, photos, tmp_path) -> None:
    data = photos["astronaut.png"]
    labels = ["astronaut", "flag", "sky"]
    templated = client.segment(data, labels, template="a photo of a {}.")
    direct = client.segment(data, [f"a photo of a {label}." for label in labels])
    np.testing.assert_array_equal(templated.label_map, direct.label_map)
    assert templated.labels == labels
    assert isinstance(templated, Segmentation)
    png = templated.overlay_png()
    overlay = Image.open(io.BytesIO(png))
    original = Image.open(io.BytesIO(data)).convert("RGB")
    assert overlay.size == original.size
    assert np.abs(np.asarray(overlay, dtype=int) - np.asarray(original, dtype=int)).mean() > 1
    assert templated.mask(labels[0]).shape == templated.label_map.shape
    assert templated.save_overlay(tmp_path / "overlay.png").stat().st_size == len(png)


def _segment_raw(url: str, image: bytes, labels: list[bytes]):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    raw = grpcclient.InferenceServerClient(url)
    image_tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    image_tensor.set_data_from_numpy(np.array([[image]], dtype=object))
    label_tensor = grpcclient.InferInput("LABELS", [1, len(labels)], "BYTES")
    label_tensor.set_data_from_numpy(np.array([labels], dtype=object).reshape(1, len(labels)))
    try:
        return raw.infer("groupvit_segment", [image_tensor, label_tensor])
    except InferenceServerException as exc:
        return exc


@pytest.mark.parametrize(
    ("image", "labels", "message"),
    [
        ("corrupt", [b"cat"], "IMAGE item 0: cannot decode"),
        ("good", [], "LABELS is empty"),
        ("good", [b"x"] * (TEST_MAX_LABELS + 1), f"more than {TEST_MAX_LABELS}"),
        ("good", [b"cat", b"\xffdog"], "LABELS item 1: text is not valid UTF-8"),
    ],
)
def test_bad_segment_requests(triton, photos, image, labels, message) -> None:
    from tritonclient.utils import InferenceServerException

    data = photos["chelsea.png"] if image == "good" else b"\x89PNG broken"
    result = _segment_raw(triton.grpc_url, data, labels)
    assert isinstance(result, InferenceServerException)
    assert "INVALID_ARGUMENT" in str(result.status())
    assert message in result.message()
    ok = _segment_raw(triton.grpc_url, photos["chelsea.png"], [b"cat", b"dog"])
    assert ok.as_numpy("label_map").shape == (1, 300, 451)  # the server keeps serving


def test_bad_segment_arguments_client_side(client: Client, photos) -> None:
    with pytest.raises(InvalidInput, match="labels is empty"):
        client.segment(photos["chelsea.png"], [])
    with pytest.raises(TypeError, match="bare str"):
        client.segment(photos["chelsea.png"], "cat")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="template"):
        client.segment(photos["chelsea.png"], ["cat"], template="no slot")
    with Client(client.url, family="clip") as clip, pytest.raises(InvalidInput, match="GroupViT"):
        clip.segment(photos["chelsea.png"], ["cat"])
