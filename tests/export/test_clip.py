"""CLIP export: graphs, report, parity against PyTorch, failures with numbers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from vlpserve.errors import ConfigError, ExportError, ParityError
from vlpserve.export import ExportOptions, export_clip
from vlpserve.export.clip import load_reference, text_graph_spec
from vlpserve.export.common import check_parity, compare, graph_io
from vlpserve.ort import session as ort_session


def test_report_describes_graphs(clip_export: Path, reference) -> None:
    report = json.loads((clip_export / "export_report.json").read_text())
    assert report["family"] == "clip"
    assert report["opset"] == 17
    assert report["logit_scale"] == pytest.approx(float(reference.model.logit_scale.detach().exp()))
    assert report["pad_token_id"] == reference.tokenizer.pad_token_id
    text = report["graphs"]["text_encoder"]
    assert [i["name"] for i in text["inputs"]] == ["input_ids", "attention_mask"]
    assert text["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int64",
        "shape": ["batch", "sequence"],
    }
    assert text["outputs"] == [{"name": "text_embeds", "dtype": "float32", "shape": ["batch", 16]}]
    image = report["graphs"]["image_encoder"]
    assert image["inputs"] == [
        {"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}
    ]
    for graph in (text, image):
        assert graph["size_bytes"] == (clip_export / graph["path"]).stat().st_size
        assert set(graph["parity"]) >= {"seeded"}
        for figures in graph["parity"].values():
            assert figures["cosine_min"] >= 0.9999
            assert figures["max_abs_diff"] < 1e-4
        assert graph["fusions"].get("SkipLayerNormalization", 0) > 0
        assert graph["plain_path"] is None
    assert set(text["parity"]) == {"seeded", "real_texts"}
    assert set(image["parity"]) == {"seeded", "real_photos"}
    # The plain graph is not kept unless asked for; tokenizer and processor sit beside.
    assert not (clip_export / "text_encoder" / "model.plain.onnx").exists()
    assert (clip_export / "tokenizer" / "tokenizer.json").is_file()
    assert (clip_export / "preprocessor" / "preprocessor_config.json").is_file()


def test_graphs_match_pytorch_on_photos(clip_export: Path, reference, photos) -> None:
    import io

    from PIL import Image

    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]
    pixels = reference.processor(images=images, return_tensors="np")["pixel_values"]
    session = ort_session(clip_export / "image_encoder" / "model.onnx")
    (got,) = session.run(None, {"pixel_values": pixels.astype(np.float32)})
    figures = compare(got, reference.image_embeds(images))
    assert figures["cosine_min"] >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_dynamic_axes(clip_export: Path) -> None:
    session = ort_session(clip_export / "text_encoder" / "model.onnx")
    for batch, length in ((1, 3), (5, 77)):
        ids = np.full((batch, length), 49407, dtype=np.int64)
        ids[:, 0] = 49406
        (out,) = session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})
        assert out.shape == (batch, 16)


def test_fp16_and_plain_kept(clip_checkpoint: Path, tmp_path: Path, reference, photos) -> None:
    import io

    from PIL import Image

    from vlpserve.export.samples import SAMPLE_TEXTS

    report = export_clip(
        ExportOptions(model=str(clip_checkpoint), out=tmp_path, precision="fp16", keep_plain=True)
    )
    for name, graph in report.graphs.items():
        assert graph.precision == "fp16"
        assert (tmp_path / graph.plain_path).is_file()
        # Inputs and outputs stay fp32: only weights and compute are half precision.
        inputs, outputs = graph_io(tmp_path / graph.path)
        assert {t["dtype"] for t in inputs + outputs} <= {"float32", "int64"}, name
        assert min(p["cosine_min"] for p in graph.parity.values()) >= 0.999
    # Run here against Hugging Face fp32, on the real photos and texts.
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]
    pixels = reference.processor(images=images, return_tensors="np")["pixel_values"]
    (got,) = ort_session(tmp_path / "image_encoder" / "model.onnx").run(
        None, {"pixel_values": pixels.astype(np.float32)}
    )
    assert compare(got, reference.image_embeds(images))["cosine_min"] >= 0.999
    texts = list(SAMPLE_TEXTS)
    tokens = reference.tokenizer(texts, padding=True, return_tensors="np")
    feeds = {k: v.astype(np.int64) for k, v in tokens.items()}
    (got,) = ort_session(tmp_path / "text_encoder" / "model.onnx").run(None, feeds)
    assert compare(got, reference.text_embeds(texts))["cosine_min"] >= 0.999


def test_int8_variant_is_quantized_and_gated(
    clip_checkpoint: Path, clip_export: Path, reference, photos, tmp_path: Path
) -> None:
    """int8: MatMul weights quantized, parity against PyTorch fp32 recorded and gated."""
    import io

    import onnx
    from PIL import Image

    report = export_clip(ExportOptions(model=str(clip_checkpoint), out=tmp_path, precision="int8"))
    for name, graph in report.graphs.items():
        assert graph.precision == "int8"
        ops = {node.op_type for node in onnx.load(str(tmp_path / graph.path)).graph.node}
        assert {"DynamicQuantizeLinear", "MatMulInteger"} & ops or "QAttention" in ops, name
        assert min(p["cosine_min"] for p in graph.parity.values()) >= 0.99
        int8_size = (tmp_path / graph.path).stat().st_size
        assert int8_size < (clip_export / graph.path).stat().st_size, name
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in photos.values()]
    pixels = reference.processor(images=images, return_tensors="np")["pixel_values"]
    session = ort_session(tmp_path / "image_encoder" / "model.onnx")
    (got,) = session.run(None, {"pixel_values": pixels.astype(np.float32)})
    assert compare(got, reference.image_embeds(images))["cosine_min"] >= 0.99


def test_parity_failure_raises_with_numbers(clip_checkpoint: Path, clip_export: Path) -> None:
    from transformers import CLIPModel

    model, tokenizer, _ = load_reference(str(clip_checkpoint), CLIPModel)
    spec = text_graph_spec(model, tokenizer)
    # Another seed's weights behind the same graph: parity must fail and say by how much.
    import torch

    torch.manual_seed(123)
    for parameter in spec.module.parameters():
        parameter.data.normal_()
    ids = np.array([[49406, 320, 1125, 49407]], dtype=np.int64)
    cases = {"one_text": {"input_ids": ids, "attention_mask": np.ones_like(ids)}}
    spec = dataclasses.replace(spec, cases=cases)
    with pytest.raises(ParityError) as info:
        check_parity(spec, clip_export / "text_encoder" / "model.onnx", tolerance=0.9999)
    error = info.value
    assert error.graph == "text_encoder" and error.check == "one_text"
    assert error.cosine_min < 0.9999
    assert "max abs diff" in str(error) and f"{error.cosine_min:.6f}" in str(error)


def _overflowing(checkpoint: Path, out: Path) -> Path:
    """The checkpoint with its text projection scaled by 1e6: fine in fp32 (the embedding
    is normalised), beyond fp16's range (65504) in a half-precision graph."""
    import torch
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(checkpoint)
    with torch.no_grad():
        model.text_projection.weight.mul_(1e6)
    model.save_pretrained(out)
    for path in checkpoint.iterdir():  # tokenizer and processor files, whichever were saved
        if not (out / path.name).exists():
            (out / path.name).write_bytes(path.read_bytes())
    return out


def test_gate_refuses_an_export_below_its_tolerance(clip_checkpoint: Path, tmp_path: Path) -> None:
    """The parity gate itself: an fp16 graph that overflows fails the export, and the CLI
    exits 1 with the figures, while the same checkpoint exports in fp32."""
    from vlpserve.cli import main

    checkpoint = _overflowing(clip_checkpoint, tmp_path / "overflowing")
    with pytest.raises(ParityError) as info:
        export_clip(ExportOptions(model=str(checkpoint), out=tmp_path / "a", precision="fp16"))
    assert info.value.graph == "text_encoder" and not info.value.cosine_min >= 0.999
    command = ["export", "clip", "--model", str(checkpoint), "--precision", "fp16"]
    assert main([*command, "--out", str(tmp_path / "b")]) == 1
    fp32 = export_clip(ExportOptions(model=str(checkpoint), out=tmp_path / "c"))
    assert fp32.graphs["text_encoder"].worst_cosine >= 0.9999


def test_bad_options_and_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opset"):
        ExportOptions(model="x", out=tmp_path, opset=9)
    with pytest.raises(ValueError):
        ExportOptions(model="x", out=tmp_path, precision="int3")
    with pytest.raises(ExportError, match="cannot load CLIP checkpoint"):
        export_clip(ExportOptions(model=str(tmp_path / "missing"), out=tmp_path / "out"))
