"""Benchmark scenarios: one request of each served task, sent with vlpserve's AsyncClient
(the task-level call a production service makes, or ``infer`` at the tensor level).

A scenario is present when its model is served; one for a family that is not served is
simply absent, never faked.
"""

from __future__ import annotations

import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vlpserve.contract import PIXEL_VALUES

if TYPE_CHECKING:  # the suite imports no client until it sends
    from vlpserve.client import AsyncClient

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
FRONT_DOOR_FAMILIES = ("openai", "http")
QUESTIONS = ("what animal is this?", "what is in the picture?", "where is it?", "is it red?")


def data_url(jpeg: bytes) -> str:
    import base64

    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()


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

    ``send(client, i)`` makes request ``i`` with an AsyncClient of the scenario's family.
    """

    name: str
    model: str
    stats_models: tuple[str, ...]
    send: Callable[[AsyncClient, int], Awaitable[Any]]
    items_per_request: int = 1
    family: str = "clip"
    description: str = ""

    @property
    def front_door(self) -> bool:
        """Sent to the OpenAI front door rather than to Triton."""
        return self.family in FRONT_DOOR_FAMILIES


# Scenarios over the photo corpus (benchmarks/photos.py: 3-12 Mpx JPEGs, a 4K PNG, a 12 Mpx
# HEIC), one image per request in turn, as users send them.
PHOTO_SCENARIOS = (
    "clip_image_photo",
    "clip_image_12mpx",
    "siglip_image_photo",
    "groupvit_segment_photo",
    "blip_caption_photo",
    "blip_itm_photo",
)


def build_scenarios(
    photos: dict[str, bytes],
    pixel_values: np.ndarray | None = None,
    corpus: dict[str, bytes] | None = None,
) -> dict[str, Scenario]:
    """Every scenario vlpserve knows, keyed by name (the ``_photo`` ones given ``corpus``)."""
    jpegs = jpeg_photos(photos)

    def pick(seq: Any, i: int) -> Any:
        return seq[i % len(seq)]

    def caption(beams: int) -> Callable[[AsyncClient, int], Awaitable[Any]]:
        return lambda c, i: c.caption([pick(jpegs, i)], max_new_tokens=20, num_beams=beams)

    scenarios = [
        Scenario(
            name="clip_text",
            model="clip_text",
            # python runtime: clip_text is one model; onnxruntime: an ensemble of the others
            stats_models=("clip_text", "clip_tokenizer", "clip_text_encoder"),
            send=lambda c, i: c.embed_texts([pick(TEXTS, i)]),
            description="one text (about 16 tokens) per request",
        ),
        Scenario(
            name="clip_image",
            model="clip_image",
            stats_models=("clip_image_preprocessor", "clip_image_encoder"),
            send=lambda c, i: c.embed_images([pick(jpegs, i)]),
            description="one JPEG per request, decoded and preprocessed in the server",
        ),
        Scenario(
            name="siglip_text",
            model="siglip_text",
            stats_models=("siglip_text", "siglip_tokenizer", "siglip_text_encoder"),
            send=lambda c, i: c.embed_texts([pick(TEXTS, i)]),
            family="siglip",
            description="one text per request, padded to SigLIP's 64 tokens",
        ),
        Scenario(
            name="siglip_image",
            model="siglip_image",
            stats_models=("siglip_image_preprocessor", "siglip_image_encoder"),
            send=lambda c, i: c.embed_images([pick(jpegs, i)]),
            family="siglip",
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
            send=lambda c, i: c.segment(pick(jpegs, i), SEGMENT_LABELS),
            family="groupvit",
            description="one JPEG and 10 labels per request",
        ),
        Scenario(
            name="blip_caption",
            model="blip_caption",
            stats_models=("blip_caption",),
            send=caption(1),
            family="blip",
            description="greedy, 20 new tokens",
        ),
        Scenario(
            name="blip_caption_beam3",
            model="blip_caption",
            stats_models=("blip_caption",),
            send=caption(3),
            family="blip",
            description="beam search, 3 beams, 20 new tokens",
        ),
        Scenario(
            name="blip_vqa",
            model="blip_vqa",
            stats_models=("blip_vqa",),
            send=lambda c, i: c.answer([pick(jpegs, i)], [pick(QUESTIONS, i)], max_new_tokens=10),
            family="blip",
            description="greedy, 10 new tokens",
        ),
        Scenario(
            name="blip_itm",
            model="blip_itm",
            stats_models=("blip_itm",),
            send=lambda c, i: c.match([pick(jpegs, i)], [pick(TEXTS, i)]),
            family="blip",
            description="one (JPEG, text) pair per request",
        ),
    ]

    # The same embeddings through the OpenAI front door: sent with the official openai
    # client as pipelines send them (its default encoding, base64), and with the bench's
    # bare HTTP client (benchmarks.http_client), which tells the front door's own cost
    # apart from the SDK's.
    def openai_embedding(item: Callable[[int], str]) -> Callable[[Any, int], Awaitable[Any]]:
        return lambda c, i: c.embeddings.create(model="clip", input=[item(i)])

    def http_embedding(item: Callable[[int], str]) -> Callable[[Any, int], Awaitable[Any]]:
        return lambda c, i: c.post(
            "/embeddings", {"model": "clip", "input": [item(i)], "encoding_format": "base64"}
        )

    behind = ("clip_text", "clip_tokenizer", "clip_image_preprocessor", "clip_image_encoder")
    items: dict[str, Callable[[int], str]] = {
        "text": lambda i: str(pick(TEXTS, i)),
        "image": lambda i: data_url(pick(jpegs, i)),
    }
    for kind, item in items.items():
        for family, send, sent_with in (
            ("openai", openai_embedding(item), "the official openai client"),
            ("http", http_embedding(item), "a bare HTTP/1.1 client"),
        ):
            scenarios.append(
                Scenario(
                    name=f"clip_{kind}_{family}",
                    model=f"clip_{kind}",
                    stats_models=behind,
                    send=send,
                    family=family,
                    description=f"one item per request, POST /v1/embeddings through the front "
                    f"door, sent with {sent_with}",
                )
            )
    if corpus:
        scenarios += _photo_scenarios(corpus)
    if pixel_values is not None:
        scenarios.insert(
            2,
            Scenario(
                name="clip_image_tensor",
                model="clip_image_encoder",
                stats_models=("clip_image_encoder",),
                send=lambda c, i: c.infer(
                    "clip_image_encoder", {PIXEL_VALUES: pick(pixel_values, i)[None]}
                ),
                description="one preprocessed pixel_values tensor per request (tensor level)",
            ),
        )
    return {s.name: s for s in scenarios}


def _photo_scenarios(corpus: dict[str, bytes]) -> list[Scenario]:
    """The image scenarios again, over the photo corpus: the server's decoding shows in the
    pre-processing model's share of the breakdown."""
    photos = list(corpus.values())
    camera = corpus["camera_12mpx.jpg"]

    def pick(i: int) -> bytes:
        return photos[i % len(photos)]

    what = "one corpus photo per request (3-12 Mpx JPEG, 4K PNG, 12 Mpx HEIC in turn)"
    embeddings = [
        Scenario(
            name=f"{family}_image_photo",
            model=f"{family}_image",
            stats_models=(f"{family}_image_preprocessor", f"{family}_image_encoder"),
            send=lambda c, i: c.embed_images([pick(i)]),
            family=family,
            description=what,
        )
        for family in ("clip", "siglip")
    ]
    return [
        *embeddings,
        Scenario(
            name="clip_image_12mpx",
            model="clip_image",
            stats_models=("clip_image_preprocessor", "clip_image_encoder"),
            send=lambda c, i: c.embed_images([camera]),
            description="the corpus's 4000x3000 camera JPEG (2.1 MB, quality 90) per request",
        ),
        Scenario(
            name="groupvit_segment_photo",
            model="groupvit_segment",
            stats_models=("groupvit_segment", "groupvit_image_encoder", "groupvit_text"),
            send=lambda c, i: c.segment(pick(i), SEGMENT_LABELS),
            family="groupvit",
            description=what + ", 10 labels; the label map at the photo's size",
        ),
        Scenario(
            name="blip_caption_photo",
            model="blip_caption",
            stats_models=("blip_caption",),
            send=lambda c, i: c.caption([pick(i)], max_new_tokens=20),
            family="blip",
            description=what + ", greedy, 20 new tokens",
        ),
        Scenario(
            name="blip_itm_photo",
            model="blip_itm",
            stats_models=("blip_itm",),
            send=lambda c, i: c.match([pick(i)], [TEXTS[i % len(TEXTS)]]),
            family="blip",
            description=what + ", with a text",
        ),
    ]
