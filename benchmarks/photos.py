"""A deterministic corpus of photos as production callers send them, made from the sample
photos at bench (or test) time: camera and phone JPEGs of 3 to 12 Mpx with sensor-like grain
(quality 85-95; one progressive, one CMYK, one stored sideways with an EXIF orientation), a
4K PNG screenshot and a 12 Mpx iPhone HEIC. Same bytes on every run (seeded grain; the
encoders are deterministic)."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from vlpserve.export.samples import photo_bytes


@dataclass(frozen=True)
class CorpusPhoto:
    """How one corpus image is made: which sample photo, at what size, saved how."""

    name: str
    source: str  # a sample photo (export.samples.PHOTO_FILES)
    size: tuple[int, int]  # (width, height) as stored
    save: Callable[[Image.Image, io.BytesIO], None]
    grain: float = 3.0  # standard deviation of the added noise, in 8-bit levels


def _jpeg(quality: int, **options: object) -> Callable[[Image.Image, io.BytesIO], None]:
    def save(image: Image.Image, out: io.BytesIO) -> None:
        image.save(out, "JPEG", quality=quality, **options)

    return save


def _cmyk(image: Image.Image, out: io.BytesIO) -> None:
    image.convert("CMYK").save(out, "JPEG", quality=95)


def _rotated(image: Image.Image, out: io.BytesIO) -> None:
    """Stored as the sensor read it, the upright picture turned 90 degrees clockwise by the
    EXIF orientation 6 that phones write."""
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(out, "JPEG", quality=90, exif=exif.tobytes())


def _heic(image: Image.Image, out: io.BytesIO) -> None:
    from vlpserve.model_repository.runtime.params import register_image_plugins

    register_image_plugins()
    # x265's fastest preset: 5 s for 12 Mpx here instead of 50 (its default, "medium").
    image.save(out, "HEIF", quality=85, enc_params={"preset": "ultrafast"})


def _png(image: Image.Image, out: io.BytesIO) -> None:
    image.save(out, "PNG")


CORPUS: tuple[CorpusPhoto, ...] = (
    CorpusPhoto("camera_12mpx.jpg", "chelsea.png", (4000, 3000), _jpeg(90)),
    CorpusPhoto("camera_8mpx.jpg", "coffee.png", (3264, 2448), _jpeg(92)),
    CorpusPhoto("phone_3mpx.jpg", "astronaut.png", (2000, 1500), _jpeg(85)),
    CorpusPhoto("progressive_8mpx.jpg", "rocket.jpg", (3264, 2448), _jpeg(88, progressive=True)),
    CorpusPhoto("cmyk_3mpx.jpg", "coffee.png", (2000, 1500), _cmyk),
    CorpusPhoto("rotated_12mpx.jpg", "astronaut.png", (4000, 3000), _rotated),
    CorpusPhoto("screenshot_4k.png", "chelsea.png", (3840, 2160), _png, grain=0.0),
    CorpusPhoto("iphone_12mpx.heic", "chelsea.png", (4032, 3024), _heic),
)


def corpus_photo(photo: CorpusPhoto, *, scale: float = 1.0) -> bytes:
    """The encoded bytes of one corpus image; ``scale`` shrinks its sides (tests)."""
    width, height = (max(16, round(side * scale)) for side in photo.size)
    source = Image.open(io.BytesIO(photo_bytes()[photo.source])).convert("RGB")
    if photo.name.startswith("screenshot"):
        image = _screenshot(source, (width, height))
    else:
        image = source.resize((width, height), Image.Resampling.BICUBIC)
    if photo.grain:
        rng = np.random.default_rng(sum(photo.name.encode()))
        noise = rng.standard_normal((height, width, 1), dtype=np.float32) * photo.grain
        grainy = np.asarray(image, dtype=np.float32) + noise  # luminance grain, as sensors
        image = Image.fromarray(np.clip(grainy + 0.5, 0, 255).astype(np.uint8))
    out = io.BytesIO()
    photo.save(image, out)
    return out.getvalue()


def photo_corpus(*, scale: float = 1.0) -> dict[str, bytes]:
    """Every corpus image by name."""
    return {photo.name: corpus_photo(photo, scale=scale) for photo in CORPUS}


def _screenshot(photo: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A desktop: flat window chrome, lines of "text", a photo in a window."""
    width, height = size
    image = Image.new("RGB", size, (236, 239, 244))
    draw = ImageDraw.Draw(image)
    unit = max(1, height // 54)
    draw.rectangle((0, 0, width, 2 * unit), fill=(40, 44, 52))  # the top bar
    left = (width // 20, 4 * unit, width // 2, height - 4 * unit)
    draw.rectangle(left, fill=(255, 255, 255), outline=(200, 200, 200))
    for row in range(left[1] + 2 * unit, left[3] - 2 * unit, 2 * unit):  # lines of text
        length = (row * 7919) % (left[2] - left[0] - 4 * unit)
        for x in range(left[0] + 2 * unit, left[0] + 2 * unit + length, unit):
            draw.rectangle((x, row, x + unit * 3 // 4, row + unit), fill=(30, 30, 30))
    window = (width * 11 // 20, 6 * unit, width - width // 20, height * 3 // 4)
    shown = photo.resize((window[2] - window[0], window[3] - window[1]), Image.Resampling.LANCZOS)
    image.paste(shown, window[:2])
    return image
