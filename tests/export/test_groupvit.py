"""GroupViT export: the image graph returns embeddings, group embeddings and the grouping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vlpserve.export.common import compare
from vlpserve.ort import session as ort_session


def test_report_and_outputs(groupvit_export: Path) -> None:
    report = json.loads((groupvit_export / "export_report.json").read_text())
    assert report["family"] == "groupvit"
    image = report["graphs"]["image_encoder"]
    assert [(o["name"], o["shape"]) for o in image["outputs"]] == [
        ("image_embeds", ["batch", 16]),
        ("group_embeds", ["batch", 4, 16]),
        ("grouping", ["batch", 4, 14, 14]),
    ]
    for graph in report["graphs"].values():
        for figures in graph["parity"].values():
            assert figures["cosine_min"] >= 0.9999


def test_grouping_matches_hugging_face(groupvit_export: Path, groupvit_reference) -> None:
    """Chained stage assignments, resized as HF does, give HF's grouping at pixel size."""
    import torch
    from transformers.models.groupvit.modeling_groupvit import get_grouping_from_attentions

    rng = np.random.default_rng(1)
    pixels = rng.standard_normal((2, 3, 224, 224)).astype(np.float32)
    session = ort_session(groupvit_export / "image_encoder" / "model.onnx")
    _, _, grouping = session.run(None, {"pixel_values": pixels})
    model = groupvit_reference.model
    with torch.no_grad():
        out = model.vision_model(pixel_values=torch.from_numpy(pixels), output_attentions=True)
        expected = get_grouping_from_attentions(out.attentions, (224, 224)).numpy()
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(grouping), size=(224, 224), mode="bilinear", align_corners=False
    ).numpy()
    assert compare(resized, expected)["max_abs_diff"] < 1e-4
    # The training flag survives export: eval mode, no gumbel sampling.
    assert not model.training
