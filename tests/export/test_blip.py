"""BLIP export: graphs per checkpoint kind, the tokenizer, int32 ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlpserve.contract import BLIP_GRAPHS
from vlpserve.errors import ExportError
from vlpserve.export import ExportOptions, export_blip, hf
from vlpserve.export.blip import detect_kind
from vlpserve.export.common import graph_io
from vlpserve.model_repository.runtime.blip_common import BlipText


@pytest.mark.parametrize("kind", ["caption", "itm", "vqa"])
def test_report_lists_the_kind_s_graphs(blip_exports: dict[str, Path], kind: str) -> None:
    report = json.loads((blip_exports[kind] / "export_report.json").read_text())
    assert report["family"] == "blip" and report["kind"] == kind
    assert tuple(report["graphs"]) == BLIP_GRAPHS[kind]
    assert report["bos_token_id"] == 30522 and report["sep_token_id"] == 102
    for graph in report["graphs"].values():
        for figures in graph["parity"].values():
            assert figures["cosine_min"] >= 0.9999


def test_decoder_graph_io(blip_exports: dict[str, Path]) -> None:
    inputs, outputs = graph_io(blip_exports["caption"] / "decoder_step" / "model.onnx")
    names = [i["name"] for i in inputs]
    assert names[:3] == ["input_ids", "position_ids", "attention_mask"]
    assert names[3:7] == ["past.0.key", "past.0.value", "cross.0.key", "cross.0.value"]
    assert "encoder_hidden_states" not in names  # cross keys/values come from the cache
    assert [o["name"] for o in outputs] == [
        "logits",
        "present.0.key",
        "present.0.value",
        "present.1.key",
        "present.1.value",
    ]
    assert outputs[0]["shape"] == ["batch", 30524]


def test_int32_ids_generate_hugging_face_s_tokens(
    blip_checkpoints: dict[str, Path], tmp_path: Path, photos
) -> None:
    """int32 token ids: the graphs declare them, and the generation engine running them
    gives Hugging Face's tokens."""
    import io

    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration

    from vlpserve.benchmarks.baselines import OrtGenerator

    report = export_blip(
        ExportOptions(model=str(blip_checkpoints["caption"]), out=tmp_path, ids_dtype="int32")
    )
    for name in ("decoder_first", "decoder_step"):
        inputs, _ = graph_io(tmp_path / report.graphs[name].path)
        assert inputs[0] == {**inputs[0], "name": "input_ids", "dtype": "int32"}
    model = BlipForConditionalGeneration.from_pretrained(blip_checkpoints["caption"]).eval()
    processor = hf.processor(blip_checkpoints["caption"])
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]
    pixels = processor(images=images, return_tensors="np")["pixel_values"].astype(np.float32)
    generator = OrtGenerator(tmp_path, max_new_tokens=10)
    try:
        served = generator(pixels)
    finally:
        generator.close()
    with torch.no_grad():
        expected = model.generate(pixel_values=torch.from_numpy(pixels), max_new_tokens=10)
    for row, ids in enumerate(served):
        assert ids == [t for t in expected[row].tolist() if t != processor.tokenizer.pad_token_id]


def test_tokenizer_ids_equal_blip_processor(blip_exports, blip_checkpoints) -> None:

    processor = hf.processor(blip_checkpoints["caption"])
    ours = BlipText(blip_exports["caption"] / "tokenizer" / "tokenizer.json")
    texts = ["a picture of", "What is the man holding?", "naïve café, déjà-vu!", "", "[DEC] x"]
    for text in texts:
        assert ours.encode(text) == processor.tokenizer(text)["input_ids"], text
    ids = processor.tokenizer(texts, padding=True, return_tensors="np")
    got, mask = ours.batch(texts)
    np.testing.assert_array_equal(got, ids["input_ids"])
    np.testing.assert_array_equal(mask, ids["attention_mask"])
    assert len(processor.tokenizer) == 30524
    assert processor.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [30522, 30523]


def test_not_a_blip_checkpoint(clip_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="not a BLIP"):
        detect_kind(str(clip_checkpoint))
    with pytest.raises(ExportError, match="cannot load BLIP checkpoint"):
        detect_kind(str(tmp_path / "missing"))
