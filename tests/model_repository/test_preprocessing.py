"""Server-side pre-processing equals Hugging Face's, in process and over gRPC."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.text import TextTokenizer, decode_texts

TEXTS = [
    "a photo of a cat",
    "",
    "Naïve café: ☕ & déjà-vu — 東京 🚀",
    "UPPER case, punctuation!!! and    spaces",
    "word " * 120,  # longer than 77 tokens: truncated, end-of-text kept
]


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def variants(photos: dict[str, bytes]) -> dict[str, bytes]:
    """The real photos plus the same in other modes and formats."""
    cat = Image.open(io.BytesIO(photos["chelsea.png"]))
    out = dict(photos)
    out["gray.png"] = _encode(cat.convert("L"), "PNG")
    out["rgba.png"] = _encode(cat.convert("RGBA"), "PNG")
    out["palette.png"] = _encode(cat.convert("P"), "PNG")
    out["cat.webp"] = _encode(cat, "WEBP", quality=90)
    out["cmyk.jpg"] = _encode(cat.convert("CMYK"), "JPEG")
    out["tall.png"] = _encode(cat.resize((31, 240)), "PNG")
    return out


@pytest.fixture(scope="module")
def steps(clip_export: Path) -> ImagePreprocessing:
    return ImagePreprocessing.from_file(clip_export / "preprocessor" / "preprocessor_config.json")


def test_pixels_equal_clip_image_processor(steps, variants, reference) -> None:
    for name, data in variants.items():
        ours = steps.preprocess(data, 0)
        image = Image.open(io.BytesIO(data))
        theirs = reference.processor(images=image, return_tensors="np")["pixel_values"][0]
        assert ours.shape == theirs.shape == (3, 224, 224), name
        np.testing.assert_allclose(ours, theirs, atol=1e-6, err_msg=name)


@pytest.mark.served
def test_served_preprocessor_equals_clip_image_processor(triton, variants, reference) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    names = list(variants)[:4]
    items = np.array([[variants[n]] for n in names], dtype=object)
    tensor = grpcclient.InferInput("IMAGE", list(items.shape), "BYTES")
    tensor.set_data_from_numpy(items)
    served = client.infer("clip_image_preprocessor", [tensor]).as_numpy("pixel_values")
    images = [Image.open(io.BytesIO(variants[n])) for n in names]
    theirs = reference.processor(images=images, return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(served, theirs, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\nnot really", "cannot decode"),
        (b"GIF89a" + b"\x00" * 5, "cannot decode"),
    ],
)
def test_decode_errors_name_the_item(steps, data: bytes, reason: str) -> None:
    with pytest.raises(InputItemError, match=f"item 3: .*{reason}"):
        steps.preprocess(data, 3)


@pytest.mark.parametrize(
    "fmt", ["TIFF", "ICO", "PPM", "SGI", "PCX", "DDS", "JPEG2000", "EPS", "QOI"]
)
def test_formats_users_do_not_upload_are_refused_by_name(steps, fmt: str) -> None:
    """PIL opens some 40 formats; only the accepted ones' decoders may run (EPS would run
    Ghostscript where it is installed)."""
    data = _encode(Image.new("RGB", (64, 64), "red"), fmt)
    with pytest.raises(InputItemError, match=f"item 2: image format {fmt} is not accepted"):
        steps.preprocess(data, 2)


def test_accepted_formats_are_configurable(clip_export: Path, steps) -> None:
    from vlpserve.model_repository.runtime.params import InputLimits

    image = Image.new("RGB", (64, 64), "red")
    for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP"):  # the default set
        assert steps.preprocess(_encode(image, fmt), 0).shape == (3, 224, 224), fmt
    config = clip_export / "preprocessor" / "preprocessor_config.json"
    tiff_too = ImagePreprocessing.from_file(config, limits=InputLimits(image_formats="png,tiff"))
    assert tiff_too.preprocess(_encode(image, "TIFF"), 0).shape == (3, 224, 224)
    with pytest.raises(InputItemError, match="image format JPEG is not accepted"):
        tiff_too.preprocess(_encode(image, "JPEG"), 0)
    with pytest.raises(InputItemError, match=r"not one of the accepted formats \(PNG, TIFF\)"):
        tiff_too.preprocess(b"\x00" * 64, 0)
    with pytest.raises(ValueError, match="NOPE"):
        InputLimits(image_formats="PNG,NOPE")


def test_the_pixel_limit_is_the_one_given(clip_export: Path) -> None:
    """Above PIL's own guard (89.5 Mpx) the user's limit holds, and the refusal names it."""
    from vlpserve.model_repository.runtime.params import InputLimits

    config = clip_export / "preprocessor" / "preprocessor_config.json"
    data = _encode(Image.new("1", (10000, 10000)), "PNG")  # 100 Mpx in a few KB
    high = ImagePreprocessing.from_file(config, limits=InputLimits(max_image_pixels=150_000_000))
    assert high.decode(data, 0).size == (10000, 10000)
    low = ImagePreprocessing.from_file(config, limits=InputLimits(max_image_pixels=50_000_000))
    with pytest.raises(InputItemError, match="100000000 pixels, over the limit of 50000000"):
        low.decode(data, 0)
    assert high.decode(data, 0).size == (10000, 10000)  # each its own limit


def test_truncated_and_tiny_images(steps, photos) -> None:
    jpeg = photos["rocket.jpg"]
    with pytest.raises(InputItemError, match="item 0: cannot decode"):
        steps.preprocess(jpeg[: len(jpeg) // 2], 0)
    with pytest.raises(InputItemError, match="1x1"):
        steps.preprocess(_encode(Image.new("RGB", (1, 1)), "PNG"), 0)


def test_tokenizer_ids_equal_hugging_face(clip_export: Path, reference) -> None:
    ours = TextTokenizer(
        clip_export / "tokenizer" / "tokenizer.json",
        max_length=77,
        pad_id=reference.tokenizer.pad_token_id,
    )
    ids, mask = ours.encode(TEXTS)
    theirs = reference.tokenizer(
        TEXTS, padding=True, truncation=True, max_length=77, return_tensors="np"
    )
    np.testing.assert_array_equal(ids, theirs["input_ids"])
    np.testing.assert_array_equal(mask, theirs["attention_mask"])
    assert ids.shape[1] == 77 and ids[-1, -1] == 49407


def test_texts_share_one_padded_length(clip_export: Path) -> None:
    ours = TextTokenizer(clip_export / "tokenizer" / "tokenizer.json", max_length=77, pad_id=0)
    ids, mask = ours.encode(["hi", "a much longer sentence than the first"])
    assert ids.shape == mask.shape and mask[1].all()  # padded to the longer text
    assert mask[0].sum() == 3 and not ids[0, 3:].any()  # <start> hi <end>, then padding


@pytest.mark.served
def test_served_tokenizer_equals_hugging_face(triton, reference) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton.grpc_url)
    items = np.array([[t.encode()] for t in TEXTS[:4]], dtype=object)
    tensor = grpcclient.InferInput("TEXT", list(items.shape), "BYTES")
    tensor.set_data_from_numpy(items)
    result = client.infer("clip_tokenizer", [tensor])
    theirs = reference.tokenizer(TEXTS[:4], padding=True, return_tensors="np")
    np.testing.assert_array_equal(result.as_numpy("input_ids"), theirs["input_ids"])
    np.testing.assert_array_equal(result.as_numpy("attention_mask"), theirs["attention_mask"])


def test_decode_texts_rejects_bad_utf8() -> None:
    assert decode_texts([b"ok", "str"]) == ["ok", "str"]
    with pytest.raises(InputItemError, match=r"item 1: text is not valid UTF-8 \(byte 0xff at 2\)"):
        decode_texts([b"fine", b"ab\xff"])


def test_transparency_as_the_reference_makes_it(clip_export: Path, photos, reference) -> None:
    """Transparent pixels: onto white under transformers 5, dropped under 4.x; the repository
    takes the convention of the transformers its export was made with."""
    from vlpserve.export import ExportReport
    from vlpserve.export.hf import transformers_major
    from vlpserve.model_repository.builder import transparent_to
    from vlpserve.model_repository.runtime.params import InputLimits

    cat = Image.open(io.BytesIO(photos["chelsea.png"])).convert("RGBA")
    alpha = np.zeros(cat.size[::-1], dtype=np.uint8)
    alpha[:, : cat.width // 2] = 255  # the right half transparent
    cat.putalpha(Image.fromarray(alpha))
    images = {
        "rgba.png": _encode(cat, "PNG"),
        "la.png": _encode(cat.convert("LA"), "PNG"),
        "palette-alpha.png": _encode(cat.convert("P"), "PNG", transparency=0),
    }
    convention = transparent_to(ExportReport.read(clip_export))
    assert convention == ("white" if transformers_major() >= 5 else "ignore")
    config = clip_export / "preprocessor" / "preprocessor_config.json"
    ours = ImagePreprocessing.from_file(config, limits=InputLimits(transparent_to=convention))
    other = "ignore" if convention == "white" else "white"
    theirs_not = ImagePreprocessing.from_file(config, limits=InputLimits(transparent_to=other))
    for name, data in images.items():
        theirs = reference.processor(images=Image.open(io.BytesIO(data)), return_tensors="np")
        np.testing.assert_allclose(ours.preprocess(data, 0), theirs["pixel_values"][0], atol=1e-6)
        assert not np.allclose(theirs_not.preprocess(data, 0), theirs["pixel_values"][0]), name


def test_length_groups_split_where_it_saves_work() -> None:
    from vlpserve.model_repository.runtime.text import length_groups

    lengths = [30, 3, 28, 5, 4, 29]
    groups = length_groups(lengths, call_tokens=16)
    assert sorted(row for group in groups for row in group) == list(range(6))
    assert [sorted(lengths[r] for r in group) for group in groups] == [[3, 4, 5], [28, 29, 30]]
    assert length_groups(lengths, call_tokens=10_000) == [[1, 4, 3, 2, 5, 0]]  # one call
    assert len(length_groups([7] * 32, call_tokens=0)) == 1  # equal lengths: nothing to gain
    assert length_groups([], call_tokens=16) == []
