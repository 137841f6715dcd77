"""Benchmark scenarios: one request of each served task, built for the asyncio gRPC client.

A scenario is present when its model is served; one for a family that is not served is
simply absent, never faked.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlpserve.contract import (
    IMAGE,
    LABELS,
    MAX_NEW_TOKENS,
    NUM_BEAMS,
    PIXEL_VALUES,
    QUESTION,
    STREAM,
    TEXT,
)

# Sentences of about 16 tokens, as the CLIP text target speaks of.
TEXTS = (
    "a photo of a small orange cat sleeping on a wooden chair in the afternoon sun",
    "a red rocket standing on the launch pad under a clear blue morning sky today",
    "an astronaut in a white space suit holding a flag next to the lunar module",
    "a cup of black coffee on a saucer beside a spoon and a small sugar bowl",
)
SEGMENT_LABELS = (
    "cat", "dog", "grass", "sky", "wall", "person", "car", "tree", "water", "building",
)  # fmt: skip
QUESTIONS = ("what animal is this?", "what is in the picture?", "where is it?", "is it red?")


def jpeg_photos(photos: dict[str, bytes]) -> list[bytes]:
    """The sample photos re-encoded as JPEG (quality 90), as production callers send them."""
    from PIL import Image

    out = []
    for data in photos.values():
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


@dataclass(frozen=True)
class Scenario:
    """One served task under load.

    ``inputs(i)`` builds request ``i`` as (name, numpy array) pairs; ``streaming`` requests
    go through the streaming RPC (decoupled models).
    """

    name: str
    model: str
    stats_models: tuple[str, ...]
    inputs: Callable[[int], list[tuple[str, np.ndarray]]]
    items_per_request: int = 1
    streaming: bool = False
    family: str = "clip"
    description: str = ""


def _bytes(value: bytes | str, shape: tuple[int, ...] = (1, 1)) -> np.ndarray:
    data = value.encode() if isinstance(value, str) else value
    return np.array([data], dtype=object).reshape(shape)


def build_scenarios(
    photos: dict[str, bytes], pixel_values: np.ndarray | None = None
) -> dict[str, Scenario]:
    """Every scenario vlpserve knows, keyed by name."""
    jpegs = jpeg_photos(photos)

    def pick(seq: Any, i: int) -> Any:
        return seq[i % len(seq)]

    def generation(max_new: int, beams: int, text_name: str | None, texts: Any) -> Callable:
        def inputs(i: int) -> list[tuple[str, np.ndarray]]:
            out = [
                (IMAGE, _bytes(pick(jpegs, i), (1,))),
                (MAX_NEW_TOKENS, np.array([max_new], dtype=np.int32)),
                (NUM_BEAMS, np.array([beams], dtype=np.int32)),
                (STREAM, np.array([False])),
            ]
            if text_name:
                out.append((text_name, _bytes(pick(texts, i), (1,))))
            return out

        return inputs

    scenarios = [
        Scenario(
            name="clip_text",
            model="clip_text",
            # python runtime: clip_text is one model; onnxruntime: an ensemble of the others
            stats_models=("clip_text", "clip_tokenizer", "clip_text_encoder"),
            inputs=lambda i: [(TEXT, _bytes(pick(TEXTS, i)))],
            description="one text (about 16 tokens) per request",
        ),
        Scenario(
            name="clip_image",
            model="clip_image",
            stats_models=("clip_image_preprocessor", "clip_image_encoder"),
            inputs=lambda i: [(IMAGE, _bytes(pick(jpegs, i)))],
            description="one JPEG per request, decoded and preprocessed in the server",
        ),
        Scenario(
            name="groupvit_segment",
            model="groupvit_segment",
            stats_models=(
                "groupvit_segment",
                "groupvit_image_encoder",
                "groupvit_text",
                "groupvit_text_encoder",
            ),
            inputs=lambda i: [
                (IMAGE, _bytes(pick(jpegs, i))),
                (LABELS, np.array([[s.encode() for s in SEGMENT_LABELS]], dtype=object)),
            ],
            family="groupvit",
            description="one JPEG and 10 labels per request",
        ),
        Scenario(
            name="blip_caption",
            model="blip_caption",
            stats_models=("blip_caption",),
            inputs=generation(20, 1, None, None),
            streaming=True,
            family="blip",
            description="greedy, 20 new tokens",
        ),
        Scenario(
            name="blip_caption_beam3",
            model="blip_caption",
            stats_models=("blip_caption",),
            inputs=generation(20, 3, None, None),
            streaming=True,
            family="blip",
            description="beam search, 3 beams, 20 new tokens",
        ),
        Scenario(
            name="blip_vqa",
            model="blip_vqa",
            stats_models=("blip_vqa",),
            inputs=generation(10, 1, QUESTION, QUESTIONS),
            streaming=True,
            family="blip",
            description="greedy, 10 new tokens",
        ),
        Scenario(
            name="blip_itm",
            model="blip_itm",
            stats_models=("blip_itm",),
            inputs=lambda i: [(IMAGE, _bytes(pick(jpegs, i))), (TEXT, _bytes(pick(TEXTS, i)))],
            family="blip",
            description="one (JPEG, text) pair per request",
        ),
    ]
    if pixel_values is not None:
        scenarios.insert(
            2,
            Scenario(
                name="clip_image_tensor",
                model="clip_image_encoder",
                stats_models=("clip_image_encoder",),
                inputs=lambda i: [(PIXEL_VALUES, pick(pixel_values, i)[None])],
                description="one preprocessed pixel_values tensor per request (tensor level)",
            ),
        )
    return {s.name: s for s in scenarios}
