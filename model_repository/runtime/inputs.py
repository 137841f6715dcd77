"""What each raw model makes of a request's input arrays: pure functions of numpy arrays
(as Triton hands them over), so they are tested in process, fuzzed included.

Every problem with an input is an ``InvalidRequest`` naming the input (and the item), found
before any expensive work; nothing else may escape for any input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from PIL import Image

from vlpserve.contract import (
    IMAGE,
    LABELS,
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    PROMPT,
    QUESTION,
    REPETITION_PENALTY,
    STREAM,
    TEXT,
)
from vlpserve.model_repository.runtime.errors import InputItemError, InvalidRequest, named
from vlpserve.model_repository.runtime.generation import GenerationParams
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.model_repository.runtime.params import InputLimits
from vlpserve.model_repository.runtime.text import decode_texts

Arrays = Mapping[str, np.ndarray | None]  # a request's inputs by name; None when absent
T = TypeVar("T")


def required(inputs: Arrays, name: str) -> np.ndarray:
    array = inputs.get(name)
    if array is None:
        raise InvalidRequest(f"input {name!r} is missing")
    return np.asarray(array)


def items(inputs: Arrays, name: str) -> list[object]:
    """The elements of an input, flat."""
    return list(required(inputs, name).reshape(-1).tolist())


def texts(inputs: Arrays, name: str, limits: InputLimits) -> list[str]:
    """Every text of a BYTES input, decoded; errors name the input and the item."""
    try:
        return decode_texts(items(inputs, name), limits.max_text_bytes)
    except InputItemError as exc:
        raise named(name, exc) from exc


def one_text(inputs: Arrays, name: str, limits: InputLimits) -> str | None:
    """The single text of an optional BYTES input (None when absent or empty)."""
    array = inputs.get(name)
    if array is None or array.size == 0:
        return None
    if array.size != 1:
        raise InvalidRequest(f"{name}: send one text per request, got {array.size}")
    return texts(inputs, name, limits)[0]


def one_number(inputs: Arrays, name: str, default: float) -> float:
    array = inputs.get(name)
    if array is None or array.size == 0:
        return default
    if array.size != 1:
        raise InvalidRequest(f"{name}: send one value, got {array.size}")
    try:
        value = float(np.asarray(array).reshape(-1)[0])
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{name}: not a number") from exc
    if not np.isfinite(value):
        raise InvalidRequest(f"{name}: {value} is not a finite number")
    return value


def image_bytes(inputs: Arrays, name: str = IMAGE) -> list[bytes]:
    """The encoded images of a BYTES input."""
    found = items(inputs, name)
    if not found:
        raise InvalidRequest(f"{name}: the request holds no images")
    out = []
    for index, item in enumerate(found):
        if not isinstance(item, bytes | bytearray | np.bytes_):
            raise InvalidRequest(f"{name} item {index}: expected encoded image bytes")
        out.append(bytes(item))
    return out


def one_image(inputs: Arrays, steps: ImagePreprocessing) -> Image.Image:
    """The single image of a request, decoded (RGB)."""
    found = image_bytes(inputs)
    if len(found) != 1:
        raise InvalidRequest(f"{IMAGE}: send one image per request, got {len(found)}")
    return decoded(steps, found[0], 0)


def decoded(steps: ImagePreprocessing, data: bytes, index: int) -> Image.Image:
    """One encoded image, decoded (RGB); errors name the IMAGE item."""
    try:
        return steps.decode(data, index)
    except InputItemError as exc:
        raise named(IMAGE, exc) from exc


def pixels(steps: ImagePreprocessing, data: bytes, index: int) -> np.ndarray:
    """One encoded image, decoded and pre-processed; errors name the IMAGE item."""
    return steps(decoded(steps, data, index))


def segment_request(
    inputs: Arrays, steps: ImagePreprocessing, max_labels: int
) -> tuple[Image.Image, list[str]]:
    """``<family>_segment``: the image (decoded) and its labels."""
    labels = texts(inputs, LABELS, steps.limits)
    if not labels:
        raise InvalidRequest(f"{LABELS} is empty: give at least one label")
    if len(labels) > max_labels:
        raise InvalidRequest(f"{LABELS} holds {len(labels)} labels, more than {max_labels}")
    return one_image(inputs, steps), labels


def pairs(
    inputs: Arrays,
    steps: ImagePreprocessing,
    prepare: Callable[[ImagePreprocessing, bytes, int], T],
) -> tuple[list[T], list[str]]:
    """``blip_itm``: the images (``prepare``d: pixels, or ``decoded`` images for the
    device) and texts of each (image, text) pair."""
    images = image_bytes(inputs)
    captions = texts(inputs, TEXT, steps.limits)
    if len(images) != len(captions):
        raise InvalidRequest(f"{IMAGE} and {TEXT} hold {len(images)} and {len(captions)} items")
    return [prepare(steps, data, i) for i, data in enumerate(images)], captions


def generation_params(inputs: Arrays) -> GenerationParams:
    """Decoding options of a ``blip_caption`` / ``blip_vqa`` request, range-checked."""
    try:
        return GenerationParams(
            max_new_tokens=int(one_number(inputs, MAX_NEW_TOKENS, 30)),
            num_beams=int(one_number(inputs, NUM_BEAMS, 1)),
            repetition_penalty=one_number(inputs, REPETITION_PENALTY, 1.0),
        )
    except ValueError as exc:  # GenerationParams' range checks name the fields in lower case
        message = str(exc)
        for name in (MAX_NEW_TOKENS, NUM_BEAMS, REPETITION_PENALTY):
            message = message.replace(name.lower(), name)
        raise InvalidRequest(message) from exc


@dataclass(frozen=True)
class Generation:
    """A parsed ``blip_caption`` / ``blip_vqa`` request."""

    params: GenerationParams
    image: Image.Image
    prompt: list[int]  # the decoder's first ids
    question: list[int]  # the question's ids (VQA; empty for captions)
    stream: bool


def generation_request(
    inputs: Arrays,
    *,
    kind: str,
    encode: Callable[[str], list[int]],
    steps: ImagePreprocessing,
    bos: int,
    max_length: int,
) -> Generation:
    """A captioning (prompt optional) or VQA (question required) request; ``encode`` is
    the checkpoint's tokenizer (text -> ids with [CLS] ... [SEP])."""
    stream = bool(one_number(inputs, STREAM, 0.0))
    params = generation_params(inputs)
    image = one_image(inputs, steps)
    if kind == "caption":
        prompt = one_text(inputs, PROMPT, steps.limits)
        ids = encode(prompt) if prompt else [bos, 0]
        ids = [bos, *ids[1:-1]]  # [DEC] replaces [CLS]; the prompt's [SEP] goes
        what, length, question = PROMPT, len(ids), []
    else:
        text = one_text(inputs, QUESTION, steps.limits)
        if not text:
            raise InvalidRequest(f"{QUESTION} is missing or empty")
        question = encode(text)
        ids, what, length = [bos], QUESTION, len(question)
    if length + params.max_new_tokens > max_length:
        raise InvalidRequest(
            f"{what} is {length} tokens: with {MAX_NEW_TOKENS} {params.max_new_tokens} it "
            f"exceeds the model's {max_length} positions"
        )
    return Generation(params, image, ids, question, stream)
