"""CLIP served end to end: a real tritonserver, the real gRPC client, PyTorch as reference."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TEST_MAX_BATCH_SIZE
from vlpserve.client import Client, DeadlineExceeded, InvalidInput, ModelNotReady
from vlpserve.errors import ServerUnavailable
from vlpserve.export.samples import SAMPLE_LABELS, SAMPLE_TEXTS, photo_paths
from vlpserve.serve import free_port

COSINE = 0.9999


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def client(triton):
    with Client(triton.grpc_url, timeout_s=60) as client:
        yield client


def test_ready(client: Client) -> None:
    assert client.ready()


def test_text_embeddings_equal_pytorch(client: Client, reference) -> None:
    texts = [*SAMPLE_TEXTS, "word " * 100]  # more than max_batch_size: split and sent together
    assert len(texts) > TEST_MAX_BATCH_SIZE
    served = client.embed_texts(texts)
    expected = reference.text_embeds(texts)
    assert served.shape == expected.shape and served.dtype == np.float32
    assert _cosines(served, expected).min() >= COSINE


def test_image_embeddings_equal_pytorch(client: Client, reference, photos) -> None:
    served = client.embed_images(list(photos.values()) * 2)
    images = [Image.open(io.BytesIO(b)) for b in photos.values()] * 2
    expected = reference.image_embeds(images)
    assert served.shape == expected.shape
    assert _cosines(served, expected).min() >= COSINE


def test_image_input_kinds_agree(client: Client, photos) -> None:
    path = photo_paths()[0]
    pil = Image.open(path).convert("RGB")
    kinds = [path, str(path), pil, np.asarray(pil)]
    served = client.embed_images(kinds)
    # PNG files and PNG-encoded PIL images / arrays decode to the same pixels.
    assert _cosines(served, np.repeat(served[:1], len(kinds), axis=0)).min() >= 0.99999


def test_classify_equals_pytorch_softmax(client: Client, reference, photos) -> None:
    import torch

    labels = list(SAMPLE_LABELS)
    probs = client.classify(list(photos.values()), labels)
    prompts = [f"a photo of a {label}" for label in labels]
    images = [Image.open(io.BytesIO(b)) for b in photos.values()]
    batch = reference.processor(images=images, return_tensors="pt")
    tokens = reference.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = reference.model(**tokens, pixel_values=batch["pixel_values"]).logits_per_image
    expected = logits.softmax(dim=-1).numpy()
    assert probs.shape == (len(images), len(labels))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    assert client.logit_scale == pytest.approx(float(reference.model.logit_scale.detach().exp()))


def test_bad_python_inputs(client: Client, photos) -> None:
    with pytest.raises(TypeError, match="bare str"):
        client.embed_texts("a photo of a cat")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="bare bytes"):
        client.embed_images(photos["chelsea.png"])  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="empty"):
        client.embed_texts([])
    with pytest.raises(InvalidInput, match="empty"):
        client.embed_images([])
    with pytest.raises(TypeError, match="item 1"):
        client.embed_texts(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInput, match="labels is empty"):
        client.classify([photos["chelsea.png"]], [])
    with pytest.raises(InvalidInput, match="template"):
        client.classify([photos["chelsea.png"]], ["cat"], template="no slot")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"", "empty"),
        (b"definitely not an image", "cannot decode"),
        ("truncated", "cannot decode"),
        ("1x1", "1x1"),
    ],
)
def test_bad_image_names_the_item(client: Client, photos, bad, reason: str) -> None:
    if bad == "truncated":
        bad = photos["rocket.jpg"][:2000]
    elif bad == "1x1":
        bad = Image.new("RGB", (1, 1), "red")
    good = photos["coffee.png"]
    # Item 6 lands in the second request of max_batch_size 4: the index is the caller's.
    items = [good] * 6 + [bad] + [good]
    with pytest.raises(InvalidInput, match=f"IMAGE item 6: .*{reason}"):
        client.embed_images(items)
    assert client.embed_images([good]).shape[0] == 1  # the server keeps serving


def _raw_request(url: str, model: str, name: str, items: list[bytes]):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    array = np.array(items, dtype=object).reshape(-1, 1)
    tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return client, tensor


def test_non_utf8_text_is_invalid_argument(triton) -> None:
    from tritonclient.utils import InferenceServerException

    client, tensor = _raw_request(triton.grpc_url, "clip_text", "TEXT", [b"fine", b"caf\xe9"])
    with pytest.raises(InferenceServerException) as info:
        client.infer("clip_text", [tensor])
    assert "INVALID_ARGUMENT" in str(info.value.status())
    assert "TEXT item 1: text is not valid UTF-8 (byte 0xe9 at 3)" in info.value.message()


def _execution_count(url: str, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    stats = grpcclient.InferenceServerClient(url).get_inference_statistics(model, as_json=True)
    entry = stats["model_stats"][0]
    return int(entry.get("execution_count", 0)), int(entry.get("inference_count", 0))


def test_bad_request_fails_alone_in_its_batch(triton, photos) -> None:
    """Requests batched with a corrupt one still succeed; the corrupt one gets its error."""
    from tritonclient.utils import InferenceServerException

    model = "clip_image"
    payloads = [[photos["chelsea.png"]], [b"corrupt"], [photos["coffee.png"]], [b""]]
    before = _execution_count(triton.grpc_url, "clip_image_preprocessor")
    results: dict[int, object] = {}
    clients = []
    for index, items in enumerate(payloads):
        client, tensor = _raw_request(triton.grpc_url, model, "IMAGE", items)
        clients.append(client)
        client.async_infer(
            model, [tensor], lambda result, error, i=index: results.__setitem__(i, result or error)
        )
    deadline = time.monotonic() + 60
    while len(results) < len(payloads) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == len(payloads), "not every request was answered"
    after = _execution_count(triton.grpc_url, "clip_image_preprocessor")
    assert after[1] - before[1] == 4  # four images went through the pre-processor ...
    assert after[0] - before[0] < 4  # ... in fewer executions: they were batched together
    for index in (0, 2):
        assert results[index].as_numpy("image_embeds").shape == (1, 16)  # type: ignore[union-attr]
    for index in (1, 3):
        error = results[index]
        assert isinstance(error, InferenceServerException)
        assert "INVALID_ARGUMENT" in str(error.status())
        assert "IMAGE item 0" in error.message()


def test_texts_of_different_lengths_share_an_encoder_batch(triton, reference) -> None:
    """Token tensors of different lengths, sent together straight to the encoder, run in
    one batch (ragged inputs, padded by the model) and each equals PyTorch's embedding."""
    import tritonclient.grpc as grpcclient

    texts = ["a cat", "a photo of a dog on the grass", "sky", "a red car parked by a wall"]
    model = "clip_text_encoder"
    before = _execution_count(triton.grpc_url, model)
    results: dict[int, object] = {}
    clients = []
    for index, text in enumerate(texts):
        ids = reference.tokenizer([text], return_tensors="np")["input_ids"].astype(np.int64)
        tensors = []
        for name, value in (("input_ids", ids), ("attention_mask", np.ones_like(ids))):
            tensor = grpcclient.InferInput(name, list(value.shape), "INT64")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        clients.append(client)
        client.async_infer(
            model, tensors, lambda result, error, i=index: results.__setitem__(i, result or error)
        )
    deadline = time.monotonic() + 60
    while len(results) < len(texts) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == len(texts), "not every request was answered"
    after = _execution_count(triton.grpc_url, model)
    assert after[1] - before[1] == len(texts)
    assert after[0] - before[0] < len(texts)  # lengths 4 to 10 tokens, batched together
    served = np.concatenate([results[i].as_numpy("text_embeds") for i in range(len(texts))])  # type: ignore[union-attr]
    assert _cosines(served, reference.text_embeds(texts)).min() >= COSINE


def test_deadline_exceeded(triton, photos) -> None:
    with Client(triton.grpc_url, timeout_s=0.001) as client, pytest.raises(DeadlineExceeded):
        client.embed_images([photos["astronaut.png"]] * 3)


def test_server_unavailable_after_retries() -> None:
    started = time.monotonic()
    with Client(f"localhost:{free_port()}", retries=2, retry_backoff_s=0.05) as client:
        with pytest.raises(ServerUnavailable):
            client.embed_texts(["hello"])
        assert not client.ready()
    assert time.monotonic() - started < 10


def test_unknown_model_is_not_ready(client: Client) -> None:
    with pytest.raises(ModelNotReady):
        client.model_config("no_such_model")


def test_client_imports_nothing_heavy() -> None:
    code = (
        "import sys, vlpserve.client; "
        "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime') "
        "if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_token_counts_come_with_the_embeddings(client: Client, reference) -> None:
    texts = [*SAMPLE_TEXTS, "word " * 100]  # split over two requests; the last truncated
    embeds, counts = client.embed_texts_and_count(texts)
    np.testing.assert_allclose(embeds, client.embed_texts(texts), atol=1e-6)
    expected = [len(ids) for ids in reference.tokenizer(texts, truncation=True)["input_ids"]]
    assert counts.tolist() == expected and counts.dtype == np.int32
    assert counts[-1] == 77


def test_length_groups_change_no_embedding(client: Client, reference) -> None:
    """Texts of 3 to 30 tokens in one request run in groups of similar length (each padded
    to its own longest): every vector is the one the text gets alone, and Hugging Face's."""
    texts = ["cat", "a photo of a dog", "word " * 26, "a very long caption " * 6][
        :TEST_MAX_BATCH_SIZE
    ]
    together = client.embed_texts(texts)
    alone = np.concatenate([client.embed_texts([text]) for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert np.sum(together * reference.text_embeds(texts), axis=1).min() >= 0.9999
