"""Image decoding and the Hugging Face image-processor pipeline, in numpy and PIL.

``ImagePreprocessing`` reads a ``preprocessor_config.json`` (CLIPImageProcessor,
BlipImageProcessor) and reproduces its steps with the same element types, so its output is
the processor's output: convert to RGB, resize with PIL, center crop, rescale in float64
then cast to float32, normalise, channels first. Decoding is transformers' ``load_image``:
the EXIF orientation applied (a phone photo taken upright is stored sideways with a tag).

With ``decode="fast"`` a JPEG is decoded at a reduced scale in libjpeg's DCT domain (PIL's
``draft``), the smallest of 1/2, 1/4, 1/8 that leaves at least twice the model's input on
each side, and then resized as usual: not bit-equal, parity-gated.
"""

from __future__ import annotations

import io
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from vlpserve.model_repository.runtime.errors import InputItemError
from vlpserve.model_repository.runtime.params import InputLimits, register_image_plugins

register_image_plugins()
# EXIF's orientation tag; 1 is upright.
ORIENTATION = 0x0112


@dataclass(frozen=True, kw_only=True)
class ImagePreprocessing:
    """The steps of a Hugging Face image processor."""

    resize_shortest_edge: int | None = None
    resize_to: tuple[int, int] | None = None  # (height, width)
    resample: int = 3  # PIL.Image.BICUBIC
    crop: tuple[int, int] | None = None  # (height, width)
    rescale_factor: float | None = 1 / 255
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    limits: InputLimits = field(default_factory=InputLimits)

    @classmethod
    def from_hf_config(cls, config: dict[str, Any], *, limits: InputLimits | None = None) -> Any:
        """Steps of a ``preprocessor_config.json`` as a dict."""
        size = config.get("size") or {}
        if isinstance(size, int):
            size = {"shortest_edge": size}
        crop = config.get("crop_size") or {}
        if isinstance(crop, int):
            crop = {"height": crop, "width": crop}
        resize = config.get("do_resize", True)
        return cls(
            resize_shortest_edge=size.get("shortest_edge") if resize else None,
            resize_to=((size["height"], size["width"]) if resize and "height" in size else None),
            resample=int(config.get("resample", 3)),
            crop=(crop["height"], crop["width"]) if config.get("do_center_crop") else None,
            rescale_factor=config.get("rescale_factor", 1 / 255)
            if config.get("do_rescale", True)
            else None,
            mean=tuple(config["image_mean"]) if config.get("do_normalize", True) else None,
            std=tuple(config["image_std"]) if config.get("do_normalize", True) else None,
            limits=limits or InputLimits(),
        )

    @classmethod
    def from_file(cls, path: Path, *, limits: InputLimits | None = None) -> Any:
        return cls.from_hf_config(json.loads(Path(path).read_text()), limits=limits)

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the output."""
        if self.crop:
            return self.crop
        if self.resize_to:
            return self.resize_to
        raise ValueError("output size depends on the input: no crop and no fixed resize")

    def decode(self, data: bytes, index: int) -> Image.Image:
        """Decode encoded image bytes to an RGB PIL image, or raise InputItemError.

        The size limits are checked first, the pixels from the image's header, so an image
        over them is refused before it is decoded (a small PNG can hold 400 Mpx of zeros).
        """
        limits = self.limits
        if len(data) == 0:
            raise InputItemError(index, "image is empty (0 bytes)")
        if len(data) > limits.max_image_bytes:
            raise InputItemError(
                index, f"image is {len(data)} bytes, over the limit of {limits.max_image_bytes}"
            )
        # PIL's own bomb guard speaks before our check of the header: it must use the
        # same limit (its default, 89.5 Mpx, would refuse a higher one and name it wrong).
        Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                # Only the accepted formats' decoders are tried; the header alone is read.
                image: Image.Image = Image.open(io.BytesIO(data), formats=limits.formats)
                self._check_size(image, index)
                if limits.decode == "fast":
                    self._draft(image)
                image.load()  # decodes fully: truncated data fails here
                if image.getexif().get(ORIENTATION, 1) != 1:
                    ImageOps.exif_transpose(image, in_place=True)
        except InputItemError:
            raise
        except Image.UnidentifiedImageError as exc:
            found = format_of(data)
            if found and found not in limits.formats:
                raise InputItemError(
                    index,
                    f"image format {found} is not accepted (accepted: "
                    f"{', '.join(limits.formats)}; repo build --image-formats)",
                ) from exc
            raise InputItemError(
                index,
                f"cannot decode image ({len(data)} bytes): not one of the accepted formats "
                f"({', '.join(limits.formats)})",
            ) from exc
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            # PIL's guard (the limit: a warning; twice it: an error) speaks before our check.
            pixels = re.search(r"\((\d+) pixels\)", str(exc))
            size = f"{pixels.group(1)} pixels" if pixels else "too many pixels"
            raise InputItemError(
                index, f"image is {size}, over the limit of {limits.max_image_pixels}"
            ) from exc
        except Exception as exc:  # any decoder failure on these bytes is the input's
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise InputItemError(
                index, f"cannot decode image ({len(data)} bytes): {reason}"
            ) from exc
        if min(image.size) < limits.min_image_side:
            raise InputItemError(
                index,
                f"image is {image.width}x{image.height}; both sides must be at least "
                f"{limits.min_image_side} pixels",
            )
        try:
            return self.to_rgb(image)
        except Exception as exc:  # a mode PIL cannot turn into RGB
            raise InputItemError(index, f"cannot convert a {image.mode} image to RGB") from exc

    def to_rgb(self, image: Image.Image) -> Image.Image:
        """The image in RGB as the reference processor makes it: transparency (an alpha band,
        or a palette's or an RGB image's transparent colour) composited onto white, as
        transformers 5 does, or dropped (``transparent_to="ignore"``), as 4.x did."""
        transparent = "A" in image.getbands() or image.info.get("transparency") is not None
        if transparent and self.limits.transparent_to == "white":
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image if image.mode == "RGB" else image.convert("RGB")

    def _draft(self, image: Image.Image) -> None:
        """Ask a JPEG's decoder for the smallest DCT scale whose sides stay at least twice
        the model's input (other formats ignore it)."""
        width, height = image.size
        if self.resize_to:
            scale = max(2 * self.resize_to[1] / width, 2 * self.resize_to[0] / height)
        elif self.resize_shortest_edge:
            scale = 2 * self.resize_shortest_edge / min(width, height)
        else:
            return
        if scale < 0.5:
            image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))

    def _check_size(self, image: Image.Image, index: int) -> None:
        """The image, and the image resized for the model (an extreme aspect ratio grows
        when its short side is scaled up), must stay within the pixel limit."""
        limit = self.limits.max_image_pixels
        width, height = image.size
        if width * height > limit:
            raise InputItemError(
                index,
                f"image is {width}x{height} = {width * height} pixels, over the limit of {limit}",
            )
        if (self.resize_to or self.resize_shortest_edge) and min(image.size) > 0:
            new_width, new_height = self.resize_size(image)
            if new_width * new_height > limit:
                raise InputItemError(
                    index,
                    f"image is {width}x{height}: resized to {new_width}x{new_height} for the "
                    f"model it is over the limit of {limit} pixels",
                )

    def __call__(self, image: Image.Image) -> np.ndarray:
        """Pixel values (3, H, W) float32 of an RGB image."""
        if self.resize_to or self.resize_shortest_edge:
            image = image.resize(self.resize_size(image), resample=self.resample)
        pixels = np.asarray(image)
        if self.crop:
            pixels = _center_crop(pixels, *self.crop)
        # Channels first before the arithmetic: each channel is then one contiguous block
        # (4-8x faster than broadcasting over the last axis); the element operations and
        # their order are the processor's, so the values are bit-equal.
        channels = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        if self.rescale_factor is not None:
            scaled = channels.astype(np.float64)
            scaled *= self.rescale_factor
            values = scaled.astype(np.float32)
        else:
            values = channels.astype(np.float32)
        if self.mean is not None and self.std is not None:
            values -= np.array(self.mean, dtype=np.float32)[:, None, None]
            values /= np.array(self.std, dtype=np.float32)[:, None, None]
        return values

    def resize_size(self, image: Image.Image) -> tuple[int, int]:
        """(width, height) for PIL, as transformers' get_resize_output_image_size computes."""
        if self.resize_to:
            return self.resize_to[1], self.resize_to[0]
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_short = int(self.resize_shortest_edge or short)
        new_long = int(new_short * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def preprocess(self, data: bytes, index: int) -> np.ndarray:
        """Decode and preprocess one encoded image."""
        return self(self.decode(data, index))


def format_of(data: bytes) -> str | None:
    """The format PIL would take ``data`` for, from its first bytes alone (each format's
    signature check; no decoder runs), or None."""
    Image.init()
    prefix = data[:16]
    for name, (_, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return str(name)
        except Exception:  # a signature check that cannot read these bytes: not this one
            continue
    return None


def _center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop for an HWC array, zero padding when the image is smaller."""
    orig_h, orig_w = pixels.shape[:2]
    top = (orig_h - height) // 2
    left = (orig_w - width) // 2
    if top >= 0 and left >= 0:
        return pixels[top : top + height, left : left + width]
    new_h, new_w = max(height, orig_h), max(width, orig_w)
    padded = np.zeros((new_h, new_w, pixels.shape[2]), dtype=pixels.dtype)
    pad_top = (new_h - orig_h) // 2
    pad_left = (new_w - orig_w) // 2
    padded[pad_top : pad_top + orig_h, pad_left : pad_left + orig_w] = pixels
    top = (new_h - height) // 2
    left = (new_w - width) // 2
    return padded[top : top + height, left : left + width]
