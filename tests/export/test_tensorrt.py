"""--target tensorrt: graphs TensorRT's parser takes (standard operators, a supported opset,
named dynamic axes, a profile), fp16 that keeps CLIP's overflow spots in fp32. No TensorRT
here: the graphs are linted against the operators onnx-tensorrt documents, and run by ONNX
Runtime on CPU for parity."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.export.test_clip import _overflowing
from vlpserve.cli import main
from vlpserve.errors import ConfigError, ParityError
from vlpserve.export import ExportOptions, ExportReport, export
from vlpserve.export.tensorrt import lint


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


def test_clip_for_tensorrt_in_fp16(clip_checkpoint: Path, tmp_path: Path) -> None:
    report = export(
        "clip",
        ExportOptions(
            model=str(clip_checkpoint), out=tmp_path, target="tensorrt", precision="fp16"
        ),
    )
    assert report == ExportReport.read(tmp_path)  # target and profile travel in the report
    for graph in report.graphs.values():
        path = tmp_path / graph.path
        assert lint(path) == [], graph.path
        assert graph.target == "tensorrt" and graph.fusions == {}
        assert graph.worst_cosine >= 0.999
        model = onnx.load(str(path))
        assert {n.domain for n in model.graph.node} <= {""}
        types = _elem_types(model)
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        for node in model.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax", "ReduceL2", "ReduceMean"):
                assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.name
    text = report.graphs["text_encoder"].profile
    assert text["input_ids"] == {"min": [1, 1], "opt": [8, 16], "max": [64, 77]}
    image = report.graphs["image_encoder"].profile["pixel_values"]
    assert image["min"][0] == 1 and image["max"][0] == 64 and image["min"][1:] == image["max"][1:]


def test_fp16_keeps_the_overflowing_head_in_fp32(clip_checkpoint: Path, tmp_path: Path) -> None:
    """A text projection beyond fp16's range: the plain fp16 export fails its parity gate
    (test_clip), the TensorRT one keeps the projection and the L2 normalisation in fp32."""
    checkpoint = _overflowing(clip_checkpoint, tmp_path / "overflowing")
    options = {"model": str(checkpoint), "precision": "fp16"}
    with pytest.raises(ParityError):
        export("clip", ExportOptions(**options, out=tmp_path / "plain"))
    report = export("clip", ExportOptions(**options, out=tmp_path / "trt", target="tensorrt"))
    assert report.graphs["text_encoder"].worst_cosine >= 0.999


def test_lint_finds_what_tensorrt_refuses(clip_export: Path, tmp_path: Path) -> None:
    """The ONNX Runtime target's fused graphs fail the lint (contrib operators); so do an
    unnamed dynamic axis and an opset TensorRT does not document."""
    problems = lint(clip_export / "text_encoder" / "model.onnx")
    assert any("com.microsoft" in p for p in problems), problems
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)])
    onnx.save(model, tmp_path / "bad.onnx")
    problems = lint(tmp_path / "bad.onnx")
    assert any("axis 0 is dynamic without a name" in p for p in problems), problems
    assert any("opset 19" in p for p in problems), problems


def test_blip_for_tensorrt_from_the_cli(blip_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """BLIP's vision encoder and decoders with their caches: int32 ids by default there."""
    out = tmp_path / "blip"
    argv = ["export", "blip", "--model", str(blip_checkpoints["caption"]), "--out", str(out)]
    assert main([*argv, "--target", "tensorrt", "--precision", "fp16"]) == 0
    report = ExportReport.read(out)
    assert report.ids_dtype == "int32"
    for graph in report.graphs.values():
        assert lint(out / graph.path) == [], graph.path
    step = report.graphs["decoder_step"].profile
    assert step["attention_mask"]["max"] == [64, report.max_text_length]


def test_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="opsets 13-17"):
        ExportOptions(model="x", out=tmp_path, target="tensorrt", opset=19)
    with pytest.raises(ConfigError, match="int8"):
        ExportOptions(model="x", out=tmp_path, target="tensorrt", precision="int8")
    with pytest.raises(ValueError):
        ExportOptions(model="x", out=tmp_path, target="tflite")


@pytest.mark.parametrize("family", ["clip", "groupvit"])
def test_dual_encoders_for_tensorrt_take_int32_ids(
    family: str, clip_checkpoint: Path, groupvit_checkpoint: Path, tmp_path: Path
) -> None:
    """CLIP's and GroupViT's text graphs take int32 token ids for TensorRT, as BLIP's do, and
    pass the parity gate with them (the gate feeds the graph int32 ids)."""
    checkpoint = clip_checkpoint if family == "clip" else groupvit_checkpoint
    argv = ["export", family, "--model", str(checkpoint), "--out", str(tmp_path)]
    assert main([*argv, "--target", "tensorrt"]) == 0
    report = ExportReport.read(tmp_path)
    assert report.ids_dtype == "int32"
    text = report.graphs["text_encoder"]
    assert text.worst_cosine >= 0.9999
    assert {i["name"]: i["dtype"] for i in text.inputs} == {
        "input_ids": "int32",
        "attention_mask": "int64",
    }
    assert lint(tmp_path / text.path) == []


@pytest.mark.served
def test_int32_ids_are_served(clip_checkpoint: Path, reference, tmp_path: Path) -> None:
    """A TensorRT export's repository: the tokenizer and the text model hand the graph int32
    ids, the validator accepts it, and the served embeddings are Hugging Face's."""
    import numpy as np

    from vlpserve.client import Client
    from vlpserve.model_repository import RepositoryOptions, build_repository
    from vlpserve.model_repository.validate import validate_repository
    from vlpserve.serve import TritonServer

    export("clip", ExportOptions(model=str(clip_checkpoint), out=tmp_path / "x", target="tensorrt"))
    repo = tmp_path / "repo"
    build_repository(RepositoryOptions(export_dir=tmp_path / "x", out=repo, max_batch_size=4))
    assert "clip" in validate_repository(repo).families
    texts = ["a photo of a cat", "a rocket", "two dogs playing in the snow"]
    with TritonServer(repo) as server, Client(server.grpc_url) as client:
        served = client.embed_texts(texts)
        tokens = client.infer("clip_tokenizer", {"TEXT": np.array([[t.encode()] for t in texts])})
    assert tokens["input_ids"].dtype == np.int32
    assert np.sum(served * reference.text_embeds(texts), axis=1).min() >= 0.9999
