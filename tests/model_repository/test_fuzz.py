"""Property-based tests of every raw model's input parsing, in process (runtime.inputs):
whatever arrives, the outcome is a result or an InvalidRequest naming the input, never
another exception."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vlpserve.model_repository.runtime import inputs
from vlpserve.model_repository.runtime.blip_common import BlipText
from vlpserve.model_repository.runtime.errors import InvalidRequest
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.params import InputLimits
from vlpserve.model_repository.runtime.text import TextTokenizer

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _samples() -> dict[str, bytes]:
    """Small real images in every format and oddity the README names."""
    from vlpserve.export.samples import photo_paths

    photo = Image.open(photo_paths()[0]).convert("RGB").resize((64, 48))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotated 90 degrees
    frames = [photo, photo.rotate(90), photo.convert("L").convert("RGB")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    sixteen = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 13).astype(np.uint16))
    return {
        "jpeg": _encode(photo, "JPEG"),
        "png": _encode(photo, "PNG"),
        "webp": _encode(photo, "WEBP"),
        "gif": _encode(photo, "GIF"),
        "tiff": _encode(photo, "TIFF"),
        "bmp": _encode(photo, "BMP"),
        "animated.gif": buffer.getvalue(),
        "16bit.png": _encode(sixteen, "PNG"),
        "palette-alpha.png": _encode(photo.convert("RGBA").convert("P"), "PNG", transparency=0),
        "1x10000.png": _encode(Image.new("RGB", (1, 10000)), "PNG"),
        "10000x8.png": _encode(Image.new("RGB", (10000, 8)), "PNG"),
        "exif-rotated.jpg": _encode(photo, "JPEG", exif=exif),
    }


SAMPLES = _samples()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A sample image with bytes flipped, cut or inserted."""
    data = bytearray(SAMPLES[draw(st.sampled_from(sorted(SAMPLES)))])
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(max_size=64))
    return bytes(data)


IMAGES = st.one_of(st.sampled_from(list(SAMPLES.values())), mutated(), st.binary(max_size=256))
TEXTS = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.characters(categories=["Mn", "Cf", "Zs"]), max_size=50),  # combining
    st.sampled_from(["שלום עולם", "مرحبا بالعالم", "a\u0000b", "e\u0301\u0302\u0303", "🚀" * 30]),
    st.just("x" * 100_000),
)
RAW_TEXTS = st.one_of(TEXTS.map(lambda t: t.encode()), st.binary(max_size=64))


def _never_else(call: Callable[[], object]) -> object:
    """The call's result, or None for an InvalidRequest; any other exception fails."""
    try:
        return call()
    except InvalidRequest as exc:
        assert str(exc), "an InvalidRequest says what is wrong"
        return None


@pytest.fixture(scope="module")
def clip_steps(clip_export: Path) -> ImagePreprocessing:
    return ImagePreprocessing.from_file(clip_export / "preprocessor" / "preprocessor_config.json")


@pytest.fixture(scope="module")
def blip_steps(blip_exports: dict[str, Path]) -> ImagePreprocessing:
    folder = blip_exports["caption"] / "preprocessor" / "preprocessor_config.json"
    return ImagePreprocessing.from_file(folder)


@FUZZ
@given(items=st.lists(IMAGES, min_size=0, max_size=3))
def test_image_preprocessor_input(clip_steps, items: list[bytes]) -> None:
    arrays = {"IMAGE": np.array(items, dtype=object).reshape(-1, 1)}

    def parse() -> list[np.ndarray]:
        return [
            inputs.pixels(clip_steps, data, i) for i, data in enumerate(inputs.image_bytes(arrays))
        ]

    found = _never_else(parse)
    if found is not None:
        assert all(p.shape == (3, 224, 224) and np.isfinite(p).all() for p in found)


@FUZZ
@given(items=st.lists(RAW_TEXTS, min_size=0, max_size=4))
def test_text_input(clip_export: Path, items: list[bytes]) -> None:
    tokenizer = TextTokenizer(
        clip_export / "tokenizer" / "tokenizer.json", max_length=77, pad_id=49407
    )
    arrays = {"TEXT": np.array(items, dtype=object).reshape(-1, 1)}
    texts = _never_else(lambda: inputs.texts(arrays, "TEXT", InputLimits()))
    if texts is not None:
        ids, mask = tokenizer.encode(texts)  # whatever decoded, tokenizes
        assert ids.shape == mask.shape and ids.shape[1] <= 77


@FUZZ
@given(
    image=IMAGES,
    labels=st.lists(st.one_of(TEXTS.map(str.encode), st.just(b""), st.just(b"cat")), max_size=70),
)
def test_segment_input(clip_steps, image: bytes, labels: list[bytes]) -> None:
    import dataclasses

    whole = dataclasses.replace(
        clip_steps, resize_shortest_edge=None, resize_to=(224, 224), crop=None
    )
    arrays = {
        "IMAGE": np.array([[image]], dtype=object),
        "LABELS": np.array([labels], dtype=object).reshape(1, -1),
    }
    found = _never_else(lambda: inputs.segment_request(arrays, whole, max_labels=64))
    if found is not None:
        decoded, names = found  # type: ignore[misc]
        assert 1 <= len(names) <= 64 and min(decoded.size) >= 8
        assert whole(decoded).shape == (3, 224, 224)


@FUZZ
@given(pairs=st.lists(st.tuples(IMAGES, RAW_TEXTS), min_size=0, max_size=3), extra=st.booleans())
def test_itm_input(blip_steps, pairs: list[tuple[bytes, bytes]], extra: bool) -> None:
    images = [image for image, _ in pairs]
    texts = [text for _, text in pairs] + ([b"one too many"] if extra else [])
    arrays = {
        "IMAGE": np.array(images, dtype=object).reshape(-1, 1),
        "TEXT": np.array(texts, dtype=object).reshape(-1, 1),
    }
    found = _never_else(lambda: inputs.pairs(arrays, blip_steps, inputs.pixels))
    if found is not None:
        pixels, decoded = found  # type: ignore[misc]
        assert len(pixels) == len(decoded) and not extra


NUMBERS = st.one_of(
    st.none(),
    st.integers(-(2**31), 2**31 - 1),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@FUZZ
@given(
    kind=st.sampled_from(["caption", "vqa"]),
    image=IMAGES,
    text=st.one_of(st.none(), RAW_TEXTS),
    max_new_tokens=NUMBERS,
    num_beams=NUMBERS,
    penalty=NUMBERS,
    stream=st.one_of(st.none(), st.booleans()),
)
def test_generation_input(
    blip_exports, blip_steps, kind, image, text, max_new_tokens, num_beams, penalty, stream
) -> None:
    tokens = BlipText(blip_exports["caption"] / "tokenizer" / "tokenizer.json")
    arrays: dict[str, np.ndarray | None] = {"IMAGE": np.array([image], dtype=object)}
    arrays["PROMPT" if kind == "caption" else "QUESTION"] = (
        None if text is None else np.array([text], dtype=object)
    )
    for name, value, dtype in (
        ("MAX_NEW_TOKENS", max_new_tokens, np.int32),
        ("NUM_BEAMS", num_beams, np.int32),
        ("REPETITION_PENALTY", penalty, np.float32),
        ("STREAM", stream, bool),
    ):
        if value is not None:
            cast = np.array([value], dtype=np.float64).astype(dtype) if dtype is not bool else None
            arrays[name] = cast if cast is not None else np.array([value], dtype=bool)
    found = _never_else(
        lambda: inputs.generation_request(
            arrays,
            kind=kind,
            encode=tokens.encode,
            steps=blip_steps,
            bos=30522,
            max_length=512,
        )
    )
    if found is not None:
        assert 1 <= found.params.max_new_tokens <= 256  # type: ignore[attr-defined]
        assert len(found.prompt) + found.params.max_new_tokens <= 512  # type: ignore[attr-defined]


def _opened(data: bytes) -> Image.Image:
    """The image as transformers opens it (``load_image``: the EXIF orientation applied)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(Image.open(io.BytesIO(data)))


def test_exif_rotation_is_applied_as_hugging_face_applies_it(clip_steps, reference) -> None:
    data = SAMPLES["exif-rotated.jpg"]
    ours = clip_steps.preprocess(data, 0)
    theirs = reference.processor(images=_opened(data), return_tensors="np")
    np.testing.assert_allclose(ours, theirs["pixel_values"][0], atol=1e-6)
    unturned = reference.processor(images=Image.open(io.BytesIO(data)), return_tensors="np")
    assert np.abs(ours - unturned["pixel_values"][0]).max() > 0.1  # it was turned


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_sample_format(clip_steps, reference, name: str) -> None:
    """Unmutated, each sample decodes as Hugging Face's processor prepares it, or is refused
    with a reason (sides under 8 pixels, a mode with no RGB, a format not accepted: TIFF is
    not among the defaults)."""
    data = SAMPLES[name]
    try:
        ours = clip_steps.preprocess(data, 0)
    except InvalidRequest as exc:
        assert name in ("1x10000.png", "10000x8.png", "16bit.png", "tiff"), (name, exc)
        if name == "tiff":
            assert "image format TIFF is not accepted" in str(exc)
        return
    theirs = reference.processor(images=_opened(data), return_tensors="np")
    np.testing.assert_allclose(ours, theirs["pixel_values"][0], atol=1e-6, err_msg=name)
