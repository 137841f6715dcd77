"""Bounded inputs and overload: every limit refuses with INVALID_ARGUMENT naming the item
and the limit, before the expensive work (decompression bombs leave memory alone); an
unexpected failure is INTERNAL with a short message; a full queue refuses at once."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpserve.client import Client, InvalidInput, Overloaded
from vlpserve.errors import ClientError
from vlpserve.model_repository import RepositoryOptions, Runtime, build_repository
from vlpserve.model_repository.runtime.params import InputLimits
from vlpserve.serve import TritonServer


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 20000 x 20000 PNG of 48 KB: 400 Mpx, over a GB once decoded to RGB."""
    return _png(Image.new("1", (20000, 20000)))


def _clean(message: str) -> None:
    """A refusal a caller may see: no traceback, no server path."""
    assert "Traceback" not in message and "/tmp/" not in message and ".py" not in message


def test_decompression_bomb_is_refused_from_its_header(triton, bomb, photos) -> None:
    with Client(triton.grpc_url, timeout_s=60) as client:
        with pytest.raises(InvalidInput) as info:
            client.embed_images([photos["coffee.png"], bomb])
        message = str(info.value)
        assert "IMAGE item 1: image is 400000000 pixels, over the limit of 40000000" in message
        _clean(message)
        with pytest.raises(InvalidInput, match="IMAGE item 0: image is 400000000 pixels"):
            client.embed_images([bomb])
    groupvit = Client(triton.grpc_url, family="groupvit", timeout_s=60)
    with groupvit, pytest.raises(InvalidInput, match="IMAGE item 0: image is 400000000 pixels"):
        groupvit.segment(bomb, ["cat"])
    with Client(triton.grpc_url, family="blip", timeout_s=60) as client:
        with pytest.raises(InvalidInput, match="IMAGE item 0: image is 400000000 pixels"):
            client.caption([bomb])
        with pytest.raises(InvalidInput, match="IMAGE item 0: image is 400000000 pixels"):
            client.match([bomb], ["a cat"])


def _peak_growth(triton, work) -> int:
    """Bytes the server's resident memory (tritonserver and every stub) rose above its level
    before ``work()``, sampled every 20 ms while it runs."""
    idle = sum(triton.memory().values())
    peak = idle
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(triton.memory().values()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak - idle


def test_bombs_leave_memory_alone(triton, bomb) -> None:
    """Eight at once: the server's resident memory (tritonserver and every stub) stays
    within 500 MB of idle."""

    def eight() -> None:
        with (
            Client(triton.grpc_url, timeout_s=60, max_concurrency=8) as client,
            ThreadPoolExecutor(8) as pool,
        ):
            calls = [pool.submit(client.embed_images, [bomb]) for _ in range(8)]
            for call in calls:
                with pytest.raises(InvalidInput):
                    call.result()

    grew = _peak_growth(triton, eight)
    assert grew < 500 * 2**20, grew


@pytest.fixture(scope="module")
def groupvit_server(groupvit_export: Path, tmp_path_factory: pytest.TempPathFactory):
    """GroupViT alone with repo build's defaults (64 labels per request)."""
    repo = tmp_path_factory.mktemp("repo-groupvit")
    build_repository(RepositoryOptions(export_dir=groupvit_export, out=repo))
    with TritonServer(repo) as server:
        yield server


def test_segmentation_of_a_40_mpx_photo_with_64_labels_stays_bounded(groupvit_server) -> None:
    """The label map at the photo's size is computed in bands of rows and sent as uint8:
    one request keeps the server within +1 GB of idle (the whole logits were 10 GB), eight
    at once within +2 GB; the client still hands out an int32 map at the photo's size."""
    triton = groupvit_server
    image = Image.new("L", (7300, 5479), 128)  # 40.0 Mpx, a few KB as PNG
    image.paste(255, (0, 0, 3650, 5479))
    photo = _png(image)
    labels = [f"label {i}" for i in range(64)]
    found = []

    def one() -> None:
        with Client(triton.grpc_url, family="groupvit", timeout_s=300) as client:
            found.append(client.segment(photo, labels))

    grew = _peak_growth(triton, one)
    assert grew < 2**30, grew / 2**20
    (result,) = found
    assert result.label_map.shape == (5479, 7300) and result.label_map.dtype == np.int32
    assert result.fractions.sum() == pytest.approx(1.0)

    def eight() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: one(), range(8)))

    grew = _peak_growth(triton, eight)
    assert grew < 2 * 2**30, grew / 2**20
    assert all(np.array_equal(r.label_map, result.label_map) for r in found[1:])


def test_every_limit_names_the_item_and_the_limit(triton, photos) -> None:
    wide = _png(Image.new("RGB", (9000, 8), "white"))  # 72 kpx, 56 Mpx once resized for CLIP
    huge = b"\x89PNG\r\n\x1a\n" + bytes(21 * 2**20)
    with Client(triton.grpc_url, timeout_s=60) as client:
        with pytest.raises(InvalidInput) as info:
            client.embed_images([photos["coffee.png"], photos["rocket.jpg"], huge])
        expected = f"IMAGE item 2: image is {len(huge)} bytes, over the limit of 20971520"
        assert expected in str(info.value)
        with pytest.raises(InvalidInput, match="IMAGE item 0: image is 9000x8: resized to"):
            client.embed_images([wide])
        tiff = io.BytesIO()
        Image.new("RGB", (64, 64)).save(tiff, format="TIFF")
        with pytest.raises(InvalidInput, match="IMAGE item 1: image format TIFF is not accepted"):
            client.embed_images([photos["rocket.jpg"], tiff.getvalue()])
        long = "TEXT item 1: text is 70000 bytes, over the limit of 65536"
        with pytest.raises(InvalidInput, match=long):
            client.embed_texts(["fine", "x" * 70_000])
        assert client.embed_texts(["still serving"]).shape == (1, 16)


def test_an_unexpected_failure_is_internal_and_short(triton) -> None:
    """A token id outside the vocabulary fails inside ONNX Runtime: the caller gets INTERNAL
    with the model and a request id, the traceback stays in the server log."""
    ids = np.array([[49406, 10**9, 49407]], dtype=np.int64)
    with Client(triton.grpc_url, timeout_s=60) as client:
        with pytest.raises(ClientError) as info:
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
            client.infer("clip_text_encoder", feeds)
        message = str(info.value)
        assert "clip_text_encoder: internal error (" in message and "request" in message
        _clean(message)
        assert len(message) < 300
        assert client.embed_texts(["still serving"]).shape == (1, 16)


def test_limits_reach_the_configs(clip_export: Path, tmp_path: Path) -> None:
    from vlpserve.model_repository.config import read_config

    limits = InputLimits(max_image_bytes=1000, max_image_pixels=5000, max_text_bytes=10)
    build_repository(
        RepositoryOptions(
            export_dir=clip_export,
            out=tmp_path,
            limits=limits,
            max_queue_size=3,
            queue_timeout_ms=250,
        )
    )
    for model in ("clip_image_preprocessor", "clip_tokenizer", "clip_text"):
        parameters = read_config(tmp_path / model / "config.pbtxt").parameters
        found = {k: v.string_value for k, v in parameters.items()}
        assert found["max_image_bytes"] == "1000" and found["max_text_bytes"] == "10", model
    policy = read_config(tmp_path / "clip_image_encoder" / "config.pbtxt").dynamic_batching
    assert policy.default_queue_policy.max_queue_size == 3
    assert policy.default_queue_policy.default_timeout_microseconds == 250_000
    assert policy.default_queue_policy.allow_timeout_override


@pytest.fixture(scope="module")
def tight_server(clip_export: Path, tmp_path_factory: pytest.TempPathFactory):
    """CLIP with a queue of one request and 200 ms of queue delay: a second request waits,
    a third is refused."""
    repo = tmp_path_factory.mktemp("repo-tight")
    build_repository(
        RepositoryOptions(
            export_dir=clip_export,
            out=repo,
            runtime=Runtime.PYTHON,
            max_batch_size=4,
            max_queue_delay_us=200_000,
            max_queue_size=1,
        )
    )
    with TritonServer(repo) as server:
        yield server


def _attempt(client: Client, text: str) -> object:
    try:
        return client.embed_texts([text])
    except Exception as exc:  # judged by the caller
        return exc


def test_a_full_queue_refuses_at_once(tight_server) -> None:
    texts = [f"text {i}" for i in range(8)]

    def send(text: str, retries: int) -> tuple[float, object]:
        started = time.monotonic()
        try:
            with Client(tight_server.grpc_url, retries=retries, timeout_s=30) as client:
                result: object = client.embed_texts([text])
        except Exception as exc:  # judged below
            result = exc
        return time.monotonic() - started, result

    with ThreadPoolExecutor(len(texts)) as pool:
        outcomes = list(pool.map(lambda t: send(t, 0), texts))
    refused = [(took, r) for took, r in outcomes if isinstance(r, Overloaded)]
    served = [r for _, r in outcomes if isinstance(r, np.ndarray)]
    assert refused and served, outcomes
    assert len(refused) + len(served) == len(texts), outcomes
    assert all(took < 0.15 for took, _ in refused)  # at once, not after the queue delay
    # A full queue is an answer, not an unreachable server: one client shared by the
    # calls keeps its replica in (no ejection, no failure count).
    with Client(tight_server.grpc_url, retries=0, timeout_s=30) as shared:
        with ThreadPoolExecutor(len(texts)) as pool:
            shared_outcomes = list(pool.map(lambda t: _attempt(shared, t), texts))
        assert any(isinstance(r, Overloaded) for r in shared_outcomes), shared_outcomes
        (replica,) = shared.replicas.replicas
        assert (replica.failures, replica.ejected_until) == (0, 0.0)
    # Retried with backoff while the deadline allows, every request gets through.
    with ThreadPoolExecutor(len(texts)) as pool:
        outcomes = list(pool.map(lambda t: send(t, 8), texts))
    assert all(isinstance(r, np.ndarray) for _, r in outcomes), outcomes
