"""Turning what users pass into what the server takes: lists checked, images encoded."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from vlpserve.errors import InvalidInput

# bytes (encoded JPEG/PNG/WebP/HEIC/AVIF), a file path, a PIL.Image.Image, or an HxW / HxWxC
# uint8 array.
ImageInput: TypeAlias = "bytes | str | Path | Any"


def check_list(items: object, what: str) -> list[Any]:
    """A non-empty list from a list or tuple; a bare str (or bytes) is a TypeError."""
    if isinstance(items, str | bytes | bytearray):
        raise TypeError(f"{what} must be a list, not a bare {type(items).__name__}: wrap it: [x]")
    if not isinstance(items, Sequence | np.ndarray):
        raise TypeError(f"{what} must be a list, got {type(items).__name__}")
    items = list(items)
    if not items:
        raise InvalidInput(f"{what} is empty: give at least one item")
    return items


def texts_to_bytes(texts: object, what: str = "texts") -> list[bytes]:
    """UTF-8 bytes of each text in a list of str."""
    out = []
    for index, text in enumerate(check_list(texts, what)):
        if not isinstance(text, str):
            raise TypeError(f"{what} item {index} must be a str, got {type(text).__name__}")
        out.append(text.encode("utf-8"))
    return out


def image_to_bytes(image: ImageInput, index: int) -> bytes:
    """Encoded bytes of one image; PIL images and arrays are encoded as PNG (lossless)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | Path):
        try:
            return Path(image).read_bytes()
        except OSError as exc:
            raise InvalidInput(f"images item {index}: cannot read {image}: {exc}") from exc
    from PIL import Image

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise InvalidInput(
                f"images item {index}: arrays must be HxW or HxWxC uint8, "
                f"got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(
        f"images item {index}: expected bytes, a path, a PIL image or an array, "
        f"got {type(image).__name__}"
    )


def images_to_bytes(images: object) -> list[bytes]:
    """Encoded bytes of every image in a list."""
    return [image_to_bytes(image, i) for i, image in enumerate(check_list(images, "images"))]
