"""The client and the front door on numpy 2: tests/client_env run from ``.venv-client`` (the
bare client install plus ``[openai]`` in an environment that has numpy 2) against the
tritonserver of this session, started from the main environment by the launcher.

The answers they must give are written here, from this environment's client (whose answers
the rest of the suite holds to Hugging Face) and from Hugging Face itself for CLIP.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import Reference
from vlpserve.client import Client
from vlpserve.serve import TritonServer

CLIENT_PYTHON = os.environ.get("VLPSERVE_CLIENT_PYTHON", "")
ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["a photo of a cat", "Two dogs running across a snowy field at sunset!", "a rocket"]
LABELS = ["cat", "cup of coffee", "astronaut", "rocket"]


def _expected(url: str, photos: dict[str, bytes], reference: Reference) -> dict[str, object]:
    import io

    from PIL import Image

    names = sorted(photos)
    images = [photos[name] for name in names]
    with Client(url, timeout_s=120) as client:
        clip_texts, counts = client.embed_texts_and_count(TEXTS)
        clip_images = client.embed_images(images)
        pixels = reference.processor(
            images=[Image.open(io.BytesIO(data)).convert("RGB") for data in images[:2]],
            return_tensors="np",
        )["pixel_values"].astype(np.float32)
        arrays = {
            "clip_texts": clip_texts,
            "clip_token_counts": counts,
            "clip_images": clip_images,
            "clip_probs": client.classify(images, LABELS, template="a photo of a {}"),
            "clip_logit_scale": np.float64(client.logit_scale),
            "pixels": pixels,
            "pixels_embeds": client.infer("clip_image_encoder", {"pixel_values": pixels})[
                "image_embeds"
            ],
            "match": client.match(images, LABELS[: len(images)]),
        }
        captions = client.caption(images, max_new_tokens=12)
        answers = client.answer(images, ["what is this?"] * len(images), max_new_tokens=6)
    with Client(url, family="groupvit", timeout_s=120) as client:
        found = client.segment(images[1], LABELS)
        arrays |= {
            "segment_label_map": found.label_map,
            "segment_scores": found.scores,
            "segment_fractions": found.fractions,
            "groupvit_texts": client.embed_texts(TEXTS),
        }
    with Client(url, family="siglip", timeout_s=120) as client:
        arrays |= {
            "siglip_texts": client.embed_texts(TEXTS),
            "siglip_probs": client.classify(images, LABELS),
        }
    # The main environment's client against Hugging Face, so the chain is whole here too.
    assert np.sum(clip_texts * reference.text_embeds(TEXTS), axis=1).min() >= 0.9999
    return {"arrays": arrays, "captions": captions, "answers": answers, "names": names}


@pytest.mark.skipif(
    not CLIENT_PYTHON,
    reason="`make test` sets VLPSERVE_CLIENT_PYTHON to the client-only numpy-2 environment",
)
def test_client_and_front_door_on_numpy_2(
    triton: TritonServer, photos: dict[str, bytes], reference: Reference, tmp_path: Path
) -> None:
    found = _expected(triton.grpc_url, photos, reference)
    np.savez(tmp_path / "expected.npz", **found["arrays"])  # type: ignore[arg-type]
    stored = tmp_path / "photos"
    stored.mkdir()
    for name, data in photos.items():
        (stored / name).write_bytes(data)
    setting = {
        "grpc_url": triton.grpc_url,
        "expected": str(tmp_path / "expected.npz"),
        "photos": {name: str(stored / name) for name in photos},
        "photo_names": found["names"],
        "texts": TEXTS,
        "labels": LABELS,
        "captions": found["captions"],
        "answers": found["answers"],
    }
    (tmp_path / "setting.json").write_text(json.dumps(setting))
    folder = "tests/client_env"  # with its own conftest only: the main one imports torch
    command = [CLIENT_PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", folder]
    done = subprocess.run(
        [*command, "--confcutdir", folder],
        cwd=ROOT,
        env=dict(os.environ, VLPSERVE_CLIENT_ENV=str(tmp_path / "setting.json")),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
