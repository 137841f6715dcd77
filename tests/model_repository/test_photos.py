"""Photos as users send them (benchmarks/photos.py: 3-12 Mpx camera and phone JPEGs, one
progressive, one CMYK, one stored sideways; a 4K screenshot; an iPhone HEIC), against
Hugging Face's own loading (``transformers.image_utils.load_image``: EXIF orientation, RGB)
and processors: bit-equal by default; ``decode="fast"`` within its parity gate."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.client.test_clip import _cosines as cosine_rows
from tests.model_repository.test_device_images import _levels
from vlpserve.benchmarks.photos import photo_corpus
from vlpserve.export import hf
from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.params import InputLimits, register_image_plugins

register_image_plugins()

# The gate of --decode fast, in 8-bit levels of the image the model gets (after resize and
# crop) and in the cosine of its image embeddings (the bounds; the figures measured
# are in the README).
MAX_LEVELS = 8
MEAN_LEVELS = 0.5
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def corpus(photos: dict[str, bytes]) -> dict[str, bytes]:
    """The bench's corpus at full size, and the sample photos."""
    return photo_corpus() | photos


def _hf_image(data: bytes) -> Image.Image:
    """The image as transformers loads it (EXIF orientation applied, RGB)."""
    from transformers.image_utils import load_image

    return load_image(Image.open(io.BytesIO(data)))


def _steps(export: Path, **limits: object) -> ImagePreprocessing:
    config = export / "preprocessor" / "preprocessor_config.json"
    return ImagePreprocessing.from_file(config, limits=InputLimits(**limits))  # type: ignore[arg-type]


def test_every_corpus_image_is_the_processor_s_exactly(
    clip_export: Path, corpus: dict[str, bytes]
) -> None:
    """The default decode: bit-equal to load_image + the processor on every kind of photo,
    HEIC, CMYK, progressive and EXIF-rotated included."""
    steps = _steps(clip_export)
    processor = hf.image_processor(clip_export / "preprocessor")
    for name, data in corpus.items():
        ours = steps.preprocess(data, 0)
        theirs = processor(images=_hf_image(data), return_tensors="np")["pixel_values"][0]
        assert np.array_equal(ours, theirs), name


def _rotated(photo: bytes, fmt: str) -> bytes:
    """``photo`` stored turned as a phone stores it: pixels sideways, EXIF orientation 6."""
    upright = Image.open(io.BytesIO(photo)).convert("RGB").resize((320, 240))
    exif = Image.Exif()
    exif[0x0112] = 6  # the viewer turns it 90 degrees clockwise
    out = io.BytesIO()
    upright.save(out, fmt, quality=95, exif=exif.tobytes())
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF"])
def test_the_exif_orientation_is_applied_as_hugging_face_does(
    clip_export: Path, photos: dict[str, bytes], fmt: str
) -> None:
    data = _rotated(photos["chelsea.png"], fmt)
    steps = _steps(clip_export)
    ours = steps.decode(data, 0)
    assert ours.size == (240, 320)  # upright: portrait
    theirs = _hf_image(data)
    assert np.array_equal(np.asarray(ours), np.asarray(theirs)), fmt
    # and it is the original turned clockwise (within the codec's loss)
    stored = Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGB").resize((320, 240))
    turned = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), dtype=np.int16)
    assert np.abs(np.asarray(ours, dtype=np.int16) - turned).mean() < 8, fmt


def _encoded(fmt: str, size: tuple[int, int], photos: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    image = Image.open(io.BytesIO(photos["coffee.png"])).convert("RGB").resize(size)
    image.save(out, fmt, quality=80)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_limits_and_errors(
    clip_export: Path, photos: dict[str, bytes], fmt: str
) -> None:
    """The pixel limit is read from the header before decoding; a truncated file and a
    format left out of --image-formats are the item's errors, naming why."""
    data = _encoded(fmt, (1200, 900), photos)
    assert _steps(clip_export).preprocess(data, 0).shape == (3, 224, 224)
    small = _steps(clip_export, max_image_pixels=1_000_000)
    with pytest.raises(InputItemError, match="1080000 pixels, over the limit of 1000000"):
        small.decode(data, 3)
    with pytest.raises(InputItemError, match="cannot decode image"):
        _steps(clip_export).decode(data[: len(data) // 2], 1)
    others = _steps(clip_export, image_formats="JPEG,PNG")
    with pytest.raises(InputItemError, match=f"image format {fmt} is not accepted"):
        others.decode(data, 2)


def _graph(export: Path) -> tuple[object, str]:
    """An ONNX Runtime session of the export's image graph and its input's name."""
    import onnxruntime as ort

    graph = export / "image_encoder" / "model.onnx"
    if not graph.is_file():  # BLIP's
        graph = export / "vision_encoder" / "model.onnx"
    session = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    return session, session.get_inputs()[0].name


def _graph_cosines(export: Path, exact: list[np.ndarray], fast: list[np.ndarray]) -> np.ndarray:
    """Per photo, the cosine between the graph's first outputs for the two pixel sets."""
    session, name = _graph(export)

    def outputs(pixels: list[np.ndarray]) -> np.ndarray:
        runs = [session.run(None, {name: p[None]})[0] for p in pixels]  # type: ignore[attr-defined]
        return np.stack([r.reshape(-1).astype(np.float64) for r in runs])

    return cosine_rows(outputs(exact), outputs(fast))


def _fast_against_exact(export: Path, corpus: dict[str, bytes]) -> tuple[dict, np.ndarray]:
    exact, fast = _steps(export), _steps(export, decode="fast")
    ours, theirs, levels = [], [], {}
    for name, data in corpus.items():
        a, b = exact.preprocess(data, 0), fast.preprocess(data, 0)
        diff = np.abs(_levels(a, exact) - _levels(b, exact))
        levels[name] = (float(diff.max()), float(diff.mean()))
        ours.append(b)
        theirs.append(a)
    return levels, _graph_cosines(export, theirs, ours)


@pytest.mark.parametrize("family", ["clip", "siglip", "blip"])
def test_fast_decoding_is_within_the_gate(
    family: str,
    clip_export: Path,
    siglip_export: Path,
    blip_exports: dict[str, Path],
    corpus: dict[str, bytes],
) -> None:
    export = {"clip": clip_export, "siglip": siglip_export, "blip": blip_exports["caption"]}[family]
    levels, cosines = _fast_against_exact(export, corpus)
    for name, (most, mean) in levels.items():
        if not name.endswith((".jpg", ".jpeg")):
            assert most == 0, name  # only JPEGs have a reduced-scale decode
        assert most <= MAX_LEVELS and mean <= MEAN_LEVELS, (name, most, mean)
    assert cosines.min() >= MIN_COSINE, dict(zip(corpus, cosines, strict=True))
    assert max(m for m, _ in levels.values()) > 0  # the fast path did decode differently


@pytest.mark.served
def test_served_heic_avif_and_a_rotated_photo_equal_hugging_face(
    triton, photos: dict[str, bytes], reference
) -> None:
    """Through the real server: an iPhone-style HEIC, an AVIF and a sideways-stored HEIC
    and JPEG get Hugging Face's embeddings of the images as it loads them; a broken HEIC in
    the same call fails alone, naming its item."""
    from vlpserve.client import Client, InvalidInput

    sent = [
        _encoded("HEIF", (1200, 900), photos),
        _encoded("AVIF", (900, 1200), photos),
        _rotated(photos["astronaut.png"], "HEIF"),
        _rotated(photos["chelsea.png"], "JPEG"),
    ]
    with Client(triton.grpc_url, timeout_s=120) as client:
        served = client.embed_images(sent)
        with pytest.raises(InvalidInput, match="IMAGE item 1: cannot decode"):
            client.embed_images([sent[0], sent[0][: len(sent[0]) // 3]])
    expected = reference.image_embeds([_hf_image(d) for d in sent])
    assert cosine_rows(served, expected).min() >= 0.9999


@pytest.fixture(scope="module")
def fast_server(clip_export: Path, tmp_path_factory: pytest.TempPathFactory):
    from vlpserve.model_repository.builder import RepositoryOptions, build_repository
    from vlpserve.serve import TritonServer

    out = tmp_path_factory.mktemp("repo-fast-decode")
    build_repository(
        RepositoryOptions(export_dir=clip_export, out=out, limits=InputLimits(decode="fast"))
    )
    with TritonServer(out, startup_timeout_s=300) as server:
        yield server


@pytest.mark.served
def test_served_fast_decoding_is_within_the_gate(
    fast_server, triton, corpus: dict[str, bytes], reference
) -> None:
    """`repo build --decode fast` served: camera photos' embeddings within the gate of Hugging
    Face's on the full decode, and not those of the default server (the fast path ran)."""
    from vlpserve.client import Client

    names = ["camera_12mpx.jpg", "progressive_8mpx.jpg", "rotated_12mpx.jpg", "cmyk_3mpx.jpg"]
    sent = [corpus[n] for n in names]
    with Client(fast_server.grpc_url, timeout_s=120) as client:
        served = client.embed_images(sent)
    with Client(triton.grpc_url, timeout_s=120) as client:
        exact = client.embed_images(sent)
    expected = reference.image_embeds([_hf_image(d) for d in sent])
    cosines = cosine_rows(served, expected)
    assert cosines.min() >= MIN_COSINE, dict(zip(names, cosines, strict=True))
    assert cosine_rows(exact, expected).min() >= 0.99999  # the default: Hugging Face's
    assert np.abs(served - exact).max() > 1e-6


def test_groupvit_refuses_fast_decoding(groupvit_export: Path, tmp_path: Path) -> None:
    from vlpserve.errors import ConfigError
    from vlpserve.model_repository.builder import RepositoryOptions, build_repository

    with pytest.raises(ConfigError, match="--decode fast does not pass its parity gate"):
        build_repository(
            RepositoryOptions(
                export_dir=groupvit_export, out=tmp_path, limits=InputLimits(decode="fast")
            )
        )
