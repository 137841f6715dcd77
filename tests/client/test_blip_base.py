"""The full-size BLIP base captioning architecture (seeded random weights), served: greedy and
beam captions are Hugging Face's, token for token."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from vlpserve.client import Client
from vlpserve.export import ExportOptions, export_blip, hf
from vlpserve.export.checkpoints import Size, build_blip
from vlpserve.model_repository import RepositoryOptions, build_repository
from vlpserve.serve import TritonServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    checkpoint = build_blip(
        tmp_path_factory.mktemp("blip-base"), kind="caption", size=Size.BASE, seed=0
    )
    export = tmp_path_factory.mktemp("blip-base-export")
    export_blip(ExportOptions(model=str(checkpoint), out=export))
    repo = tmp_path_factory.mktemp("blip-base-repo")
    build_repository(RepositoryOptions(export_dir=export, out=repo))
    with TritonServer(repo) as server:
        yield checkpoint, server


@pytest.mark.parametrize(("prompt", "beams"), [(None, 1), ("a picture of", 1), (None, 3)])
def test_base_captions_equal_hugging_face(base, photos, prompt, beams) -> None:
    import torch
    from transformers import BlipForConditionalGeneration

    checkpoint, server = base
    model = BlipForConditionalGeneration.from_pretrained(checkpoint).eval()
    processor = hf.processor(checkpoint)
    chosen = {name: photos[name] for name in ("chelsea.png", "rocket.jpg")}
    with Client(server.grpc_url, timeout_s=300) as client:
        served = client.caption(
            list(chosen.values()), prompt=prompt, max_new_tokens=20, num_beams=beams
        )
    assert served[0] != served[1]  # the seeded base listens to its image
    for data, caption in zip(chosen.values(), served, strict=True):
        image = Image.open(io.BytesIO(data)).convert("RGB")
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=20, num_beams=beams)
        assert caption == processor.decode(ids[0], skip_special_tokens=True)


def test_base_is_full_size(base) -> None:
    checkpoint, _ = base
    from transformers import BlipConfig

    config = BlipConfig.from_pretrained(Path(checkpoint))
    assert config.vision_config.hidden_size == 768 and config.text_config.num_hidden_layers == 12
