"""config.pbtxt from model_config_pb2 messages; both runtimes validate against graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from vlpserve.contract import blip_models, embedding_models
from vlpserve.errors import ConfigError, RepositoryError
from vlpserve.export.report import ExportReport
from vlpserve.model_repository import RepositoryOptions, validate_repository
from vlpserve.model_repository.config import (
    Batching,
    ModelConfig,
    TensorConfig,
    read_config,
    to_text,
    write_config,
)

CLIP = embedding_models("clip")
GROUPVIT = embedding_models("groupvit")


def test_max_batch_size_zero_is_written(tmp_path: Path) -> None:
    config = ModelConfig(
        name="m",
        backend="python",
        max_batch_size=0,
        inputs=(TensorConfig(name="x", dtype="float32", dims=(2, 3)),),
        outputs=(TensorConfig(name="y", dtype="object", dims=(1,)),),
    )
    text = to_text(config.to_proto())
    assert "max_batch_size: 0" in text
    parsed = read_config(write_config(config, tmp_path))
    assert parsed.max_batch_size == 0
    assert parsed.output[0].data_type == pb.TYPE_STRING
    assert list(parsed.input[0].dims) == [2, 3]


def test_invalid_configs_rejected() -> None:
    x = (TensorConfig(name="x", dtype="float32", dims=(1,)),)
    with pytest.raises(ConfigError, match="dims"):
        TensorConfig(name="x", dtype="float32", dims=(0,))
    with pytest.raises(ConfigError, match="unsupported element type"):
        TensorConfig(name="x", dtype="complex64", dims=(1,))
    with pytest.raises(ConfigError, match="dynamic batching"):
        ModelConfig(
            name="m", backend="python", max_batch_size=0, inputs=x, outputs=x, batching=Batching()
        )
    with pytest.raises(ConfigError, match="backend or ensemble"):
        ModelConfig(name="m", max_batch_size=1, inputs=x, outputs=x)
    ragged = (TensorConfig(name="y", dtype="int64", dims=(-1,), ragged=True),)
    with pytest.raises(ConfigError, match="only inputs can be ragged"):
        ModelConfig(name="m", backend="python", max_batch_size=1, inputs=x, outputs=ragged)


@pytest.mark.parametrize("fixture", ["python_repo", "onnxruntime_repo"])
def test_repository_validates(fixture: str, request: pytest.FixtureRequest) -> None:
    repo: Path = request.getfixturevalue(fixture)
    report = validate_repository(repo)
    assert report.ok and report.families == ["blip", "clip", "groupvit", "siglip"]
    expected = [m.name for m in CLIP.all()] + [m.name for m in GROUPVIT.all()]
    expected += [m.name for m in embedding_models("siglip").all()]
    for kind in ("caption", "itm", "vqa"):
        blip = blip_models(kind)
        expected += [blip.raw.name, *(blip.graph(g) for g in blip.graphs)]
    assert report.models == sorted(expected)


def test_onnxruntime_flavour_configs(onnxruntime_repo: Path, clip_export: Path) -> None:
    encoder = read_config(onnxruntime_repo / "clip_image_encoder" / "config.pbtxt")
    assert encoder.backend == "onnxruntime"
    assert encoder.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    (trt,) = encoder.optimization.execution_accelerators.gpu_execution_accelerator
    assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
    # One optimization profile over every batch the batcher forms (and every text length).
    size = encoder.max_batch_size
    assert trt.parameters["trt_profile_min_shapes"] == "pixel_values:1x3x224x224"
    assert trt.parameters["trt_profile_max_shapes"] == f"pixel_values:{size}x3x224x224"
    (text_trt,) = read_config(
        onnxruntime_repo / "clip_text_encoder" / "config.pbtxt"
    ).optimization.execution_accelerators.gpu_execution_accelerator
    longest = ExportReport.read(clip_export).max_text_length
    assert text_trt.parameters["trt_profile_max_shapes"] == ",".join(
        f"{name}:{size}x{longest}" for name in ("input_ids", "attention_mask")
    )
    assert text_trt.parameters["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert [t.name for t in encoder.input] == ["pixel_values"]
    assert list(encoder.input[0].dims) == [3, 224, 224]
    assert list(encoder.output[0].dims) == [16]
    text_encoder = read_config(onnxruntime_repo / "clip_text_encoder" / "config.pbtxt")
    # The native backend would flatten ragged inputs to 1-D: there, the tokenizer pads.
    assert not any(t.allow_ragged_batch for t in text_encoder.input)
    assert float(encoder.parameters["logit_scale"].string_value) > 1
    assert encoder.dynamic_batching.max_queue_delay_microseconds > 0
    text = read_config(onnxruntime_repo / "clip_text" / "config.pbtxt")
    assert text.platform == "ensemble"
    assert [s.model_name for s in text.ensemble_scheduling.step] == [
        "clip_tokenizer",
        "clip_text_encoder",
    ]
    assert not (onnxruntime_repo / "clip_text_encoder" / "1" / "model.py").exists()
    assert (onnxruntime_repo / "clip_text_encoder" / "1" / "model.onnx").is_file()


def test_groupvit_configs(python_repo: Path) -> None:
    encoder = read_config(python_repo / "groupvit_image_encoder" / "config.pbtxt")
    assert [(t.name, list(t.dims)) for t in encoder.output] == [
        ("image_embeds", [16]),
        ("group_embeds", [4, 16]),
        ("grouping", [4, 14, 14]),
    ]
    image = read_config(python_repo / "groupvit_image" / "config.pbtxt")
    assert [t.name for t in image.output] == ["image_embeds"]  # the raw level stays CLIP's
    segment = read_config(python_repo / "groupvit_segment" / "config.pbtxt")
    assert [(t.name, t.data_type, list(t.dims)) for t in segment.output] == [
        ("label_map", pb.TYPE_UINT8, [-1, -1]),  # up to 256 labels (TEST_MAX_LABELS)
        ("scores", pb.TYPE_FP32, [-1]),
        ("fractions", pb.TYPE_FP32, [-1]),
    ]
    assert segment.parameters["max_labels"].string_value == "10"
    assert segment.parameters["text_model"].string_value == "groupvit_text"


def test_more_labels_than_a_byte_holds_take_uint16(groupvit_export: Path, tmp_path: Path) -> None:
    from vlpserve.model_repository import build_repository

    build_repository(RepositoryOptions(export_dir=groupvit_export, out=tmp_path, max_labels=300))
    segment = read_config(tmp_path / "groupvit_segment" / "config.pbtxt")
    assert segment.output[0].name == "label_map" and segment.output[0].data_type == pb.TYPE_UINT16
    assert validate_repository(tmp_path).ok
    text = (tmp_path / "groupvit_segment" / "config.pbtxt").read_text()
    broken = text.replace("TYPE_UINT16", "TYPE_FP32", 1)
    (tmp_path / "groupvit_segment" / "config.pbtxt").write_text(broken)
    with pytest.raises(RepositoryError, match="groupvit_segment"):
        validate_repository(tmp_path)


def test_python_flavour_configs(python_repo: Path) -> None:
    encoder = read_config(python_repo / "clip_text_encoder" / "config.pbtxt")
    assert encoder.backend == "python"
    assert encoder.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
    assert [(t.name, list(t.dims), t.allow_ragged_batch) for t in encoder.input] == [
        ("input_ids", [-1], True),  # texts of different lengths share a batch ...
        ("attention_mask", [-1], True),
    ]
    # ... padded by the model with the tokenizer's pad id and a zero mask
    pads = json.loads(encoder.parameters["pad_values"].string_value)
    assert pads == {"input_ids": 49407, "attention_mask": 0}
    image = read_config(python_repo / "clip_image_encoder" / "config.pbtxt")
    assert not any(t.allow_ragged_batch for t in image.input)
    tokenizer = read_config(python_repo / "clip_tokenizer" / "config.pbtxt")
    assert tokenizer.parameters["max_length"].string_value == "77"
    assert tokenizer.parameters["pad_token_id"].string_value == "49407"
    # clip_text: tokenizer and graph in one Python model, not an ensemble of two hops.
    text = read_config(python_repo / "clip_text" / "config.pbtxt")
    assert text.backend == "python" and not text.ensemble_scheduling.step
    assert [(t.name, t.data_type) for t in text.input] == [("TEXT", pb.TYPE_STRING)]
    assert [t.name for t in text.output] == ["text_embeds", "TOKEN_COUNT"]
    assert text.parameters["pad_token_id"].string_value == "49407"
    assert float(text.parameters["logit_scale"].string_value) > 1
    assert (python_repo / "clip_text" / "1" / "model.onnx").is_file()
    assert (python_repo / "clip_text" / "1" / "tokenizer" / "tokenizer.json").is_file()


def test_validate_finds_mismatch(python_repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "repo"
    shutil.copytree(python_repo, broken)
    path = broken / "clip_image_encoder" / "config.pbtxt"
    config = read_config(path)
    config.input[0].dims[1] = 256  # the graph takes 224
    config.output[0].data_type = pb.TYPE_FP16
    path.write_text(to_text(config))
    shutil.rmtree(broken / "clip_tokenizer")
    with pytest.raises(RepositoryError) as info:
        validate_repository(broken)
    message = str(info.value)
    assert "clip_tokenizer is missing" in message
    assert "differ from the graph" in message
    assert "differ from the contract" in message


def test_validate_rejects_non_repository(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="holds no model"):
        validate_repository(tmp_path)
    with pytest.raises(RepositoryError, match="not a folder"):
        validate_repository(tmp_path / "nope")


def test_zero_queue_delay_keeps_dynamic_batching() -> None:
    """The default delay is 0: the message must still say dynamic batching is on."""
    x = (TensorConfig(name="x", dtype="float32", dims=(1,)),)
    config = ModelConfig(
        name="m",
        backend="python",
        max_batch_size=4,
        inputs=x,
        outputs=x,
        batching=Batching(max_queue_delay_us=0),
    )
    parsed = text_format.Parse(to_text(config.to_proto()), pb.ModelConfig())
    assert parsed.HasField("dynamic_batching")
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 0


def test_gpu_ids_place_the_graph_models_on_each_gpu(clip_export: Path, tmp_path: Path) -> None:
    """`repo build --gpus 0,1`: the models that run graphs get KIND_GPU instances on GPUs 0
    and 1 (``encoder_instances`` on each); tokenizing and image decoding stay on CPU. The
    rendered repository validates, and /dev/shm sizing counts an instance per GPU."""
    from vlpserve.cli import main
    from vlpserve.deploy.sizing import inspect

    out = tmp_path / "repo"
    assert main(["repo", "build", str(clip_export), "--out", str(out), "--gpus", "0,1"]) == 0
    kinds = {}
    for name in ("clip_text", "clip_image_encoder", "clip_image_preprocessor"):
        (group,) = read_config(out / name / "config.pbtxt").instance_group
        kinds[name] = (pb.ModelInstanceGroup.Kind.Name(group.kind), list(group.gpus), group.count)
    assert kinds == {
        "clip_text": ("KIND_GPU", [0, 1], 1),
        "clip_image_encoder": ("KIND_GPU", [0, 1], 1),
        "clip_image_preprocessor": ("KIND_CPU", [], 1),
    }
    assert validate_repository(out).ok
    shape = {m.name: m for m in inspect(out).models}
    assert shape["clip_image_encoder"].instances == 2
    assert shape["clip_image_preprocessor"].instances == 1


@pytest.mark.parametrize("runtime", ["python", "onnxruntime"])
def test_device_preprocessing_on_gpus(
    clip_export: Path, blip_exports: dict[str, Path], tmp_path: Path, runtime: str
) -> None:
    """`repo build --gpus 0,1 --preprocess device`: the image pre-processor's instances go
    on the GPUs with the encoders and say so in their parameters; the python runtime's graph
    models take their inputs where Triton has them (a GPU tensor stays on the GPU); BLIP's
    raw models run on the GPUs and pre-process there. Without it, pre-processing stays on
    CPU and inputs are copied to the host as before."""
    from vlpserve.cli import main

    def build(out: Path, *extra: str) -> None:
        for export_dir in (clip_export, blip_exports["caption"], blip_exports["itm"]):
            args = ["repo", "build", str(export_dir), "--out", str(out), "--runtime", runtime]
            assert main([*args, "--gpus", "0,1", *extra]) == 0
        assert validate_repository(out).ok

    def seen(out: Path, name: str) -> tuple[str, list[int], str | None, str | None]:
        config = read_config(out / name / "config.pbtxt")
        (group,) = config.instance_group
        parameters = config.parameters
        keep = parameters.get("FORCE_CPU_ONLY_INPUT_TENSORS")
        on_device = parameters.get("on_device")
        return (
            pb.ModelInstanceGroup.Kind.Name(group.kind),
            list(group.gpus),
            keep.string_value if keep else None,
            on_device.string_value if on_device else None,
        )

    build(tmp_path / "device", "--preprocess", "device")
    build(tmp_path / "host")
    python = runtime == "python"
    keep = "no" if python else None
    for folder, on_device in (("device", "1"), ("host", "0")):
        out = tmp_path / folder
        preprocessor_kind = ("KIND_GPU", [0, 1]) if on_device == "1" else ("KIND_CPU", [])
        assert seen(out, "clip_image_preprocessor") == (*preprocessor_kind, None, on_device)
        assert seen(out, "clip_image_encoder")[:3] == ("KIND_GPU", [0, 1], keep)
        assert seen(out, "blip_caption_vision_encoder")[:3] == ("KIND_GPU", [0, 1], keep)
        for raw in ("blip_caption", "blip_itm"):
            assert seen(out, raw) == ("KIND_GPU", [0, 1], None, on_device)


def test_gpu_ids_are_checked(clip_export: Path, tmp_path: Path, capsys) -> None:
    from vlpserve.cli import main
    from vlpserve.model_repository import RepositoryOptions

    with pytest.raises(ConfigError, match="need the GPU device"):
        RepositoryOptions(export_dir=clip_export, out=tmp_path, device="cpu", gpus=(0,))
    with pytest.raises(ConfigError, match="distinct"):
        RepositoryOptions(export_dir=clip_export, out=tmp_path, gpus=(1, 1))
    with pytest.raises(SystemExit):
        main(["repo", "build", str(clip_export), "--out", str(tmp_path), "--gpus", "0,x"])
    assert "expected GPU ids" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["repo", "build", str(clip_export), "--out", str(tmp_path), "--gpus", "1,1"])
    assert "expected distinct GPU ids" in capsys.readouterr().err


def test_python_runtime_on_tensorrt(clip_export: Path, tmp_path: Path, caplog) -> None:
    """`repo build --gpus 0 --tensorrt`: each encoder's parameters carry ONNX Runtime's
    TensorRT provider options (fp16, workspace, one profile up to max_batch_size), and the
    provider list built from them puts TensorRT first, on the instance's GPU, with its
    engines cached in the model's own folder; CUDA follows, CPU last."""
    from vlpserve.cli import main
    from vlpserve.layout import ModelFolder
    from vlpserve.model_repository.runtime.params import GraphParams
    from vlpserve.ort import CPU, CUDA, TENSORRT, providers

    out = tmp_path / "repo"
    args = ["repo", "build", str(clip_export), "--out", str(out), "--gpus", "0", "--tensorrt"]
    assert main([*args, "--max-batch-size", "16"]) == 0
    assert validate_repository(out).ok
    config = read_config(out / "clip_image_encoder" / "config.pbtxt")
    assert config.backend == "python"
    found = {k: v.string_value for k, v in config.parameters.items()}
    params = GraphParams.from_config(found, "clip_image_encoder")
    assert params.tensorrt == {
        "trt_fp16_enable": "True",
        "trt_max_workspace_size": str(2 << 30),
        "trt_profile_min_shapes": "pixel_values:1x3x224x224",
        "trt_profile_opt_shapes": "pixel_values:8x3x224x224",
        "trt_profile_max_shapes": "pixel_values:16x3x224x224",
    }
    cache = ModelFolder.of(out, "clip_image_encoder").engine_cache
    chosen = providers(
        [TENSORRT, CUDA, CPU], on_gpu=True, device_id=1, tensorrt=params.tensorrt,
        engine_cache=cache,
    )  # fmt: skip
    assert [name for name, _ in chosen] == [TENSORRT, CUDA, CPU]
    trt = chosen[0][1]
    assert trt["device_id"] == "1" and chosen[1][1] == {"device_id": "1"}
    assert trt["trt_engine_cache_path"] == str(cache)
    assert cache.parent == out / "clip_image_encoder" / "1"
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_fp16_enable"] == "True"
    text = read_config(out / "clip_text_encoder" / "config.pbtxt")
    text_params = GraphParams.from_config(
        {k: v.string_value for k, v in text.parameters.items()}, "clip_text_encoder"
    )
    longest = ExportReport.read(clip_export).max_text_length
    assert text_params.tensorrt["trt_profile_max_shapes"] == ",".join(
        f"{name}:16x{longest}" for name in ("input_ids", "attention_mask")
    )
    # Without the TensorRT provider (a CPU or CUDA-only ONNX Runtime): CUDA, said in the log.
    with caplog.at_level("WARNING"):
        fallback = providers([CUDA, CPU], on_gpu=True, tensorrt=params.tensorrt)
    assert [name for name, _ in fallback] == [CUDA, CPU] and "TensorRT" in caplog.text
    assert providers([TENSORRT, CUDA, CPU], tensorrt=params.tensorrt) == [(CPU, {})]
    # Without --tensorrt the python runtime's encoders have no TensorRT options.
    plain = tmp_path / "plain"
    assert main(["repo", "build", str(clip_export), "--out", str(plain), "--gpus", "0"]) == 0
    config = read_config(plain / "clip_image_encoder" / "config.pbtxt")
    assert config.parameters["tensorrt"].string_value == "{}"
    with pytest.raises(ConfigError, match="python runtime on GPU"):
        RepositoryOptions(export_dir=clip_export, out=tmp_path, tensorrt=True)
    with pytest.raises(ConfigError, match="python runtime on GPU"):
        RepositoryOptions(
            export_dir=clip_export, out=tmp_path, runtime="onnxruntime", tensorrt=True
        )


def test_encoder_instances_and_threads(clip_export: Path, tmp_path: Path) -> None:
    """`repo build --encoder-instances 2 --encoder-threads 1` (instances x threads = cores,
    the throughput layout on a 2-core CPU): every model that runs a CLIP graph gets two
    instances whose ONNX Runtime sessions have one intra-op thread each; tokenizing and image
    decoding keep theirs."""
    from vlpserve.cli import main
    from vlpserve.model_repository.runtime.params import GraphParams, TextParams

    out = tmp_path / "repo"
    args = ["repo", "build", str(clip_export), "--out", str(out)]
    assert main([*args, "--encoder-instances", "2", "--encoder-threads", "1"]) == 0
    assert validate_repository(out).ok
    for name, kind in (("clip_text", TextParams), ("clip_image_encoder", GraphParams)):
        config = read_config(out / name / "config.pbtxt")
        assert config.instance_group[0].count == 2
        found = {k: v.string_value for k, v in config.parameters.items()}
        assert kind.from_config(found, name).intra_op_threads == 1
    preprocessor = read_config(out / "clip_image_preprocessor" / "config.pbtxt")
    assert preprocessor.instance_group[0].count == 1
    with pytest.raises(ConfigError, match="encoder_threads"):
        RepositoryOptions(export_dir=clip_export, out=tmp_path, encoder_threads=-1)


def test_no_queue_policy_unless_asked_for(python_repo: Path) -> None:
    """Batched models get no queue policy by default: with one, tritonserver's batcher leaves
    its prefetching path and can sleep 500 ms with a request waiting (tests/serve/test_tail)."""
    batched = [read_config(p) for p in python_repo.glob("*/config.pbtxt")]
    batched = [c for c in batched if c.HasField("dynamic_batching")]
    assert batched and not any(c.dynamic_batching.HasField("default_queue_policy") for c in batched)
    config = Batching(max_queue_size=8)
    message = ModelConfig(
        name="m", backend="python", max_batch_size=4, inputs=(), outputs=(), batching=config
    ).to_proto()
    assert message.dynamic_batching.default_queue_policy.max_queue_size == 8
    assert message.dynamic_batching.default_queue_policy.allow_timeout_override


def test_siglip_models_carry_their_padding_and_bias(python_repo: Path, siglip_export) -> None:
    """SigLIP's text models pad to 64 and carry logit_bias beside logit_scale; the image
    pre-processor resizes to a square with no crop (its processor's config)."""
    from vlpserve.model_repository.runtime.params import TextParams

    report = ExportReport.read(siglip_export)
    config = read_config(python_repo / "siglip_text" / "config.pbtxt")
    params = TextParams.from_config({k: v.string_value for k, v in config.parameters.items()})
    assert params.pad_to == 64 and params.max_length == 64
    assert params.logit_bias == pytest.approx(report.logit_bias)
    assert params.logit_scale == pytest.approx(report.logit_scale)
    image = read_config(python_repo / "siglip_image" / "config.pbtxt")
    assert float(image.parameters["logit_bias"].string_value) == pytest.approx(report.logit_bias)
    clip = read_config(python_repo / "clip_text" / "config.pbtxt")
    assert "logit_bias" not in clip.parameters and "pad_to" in clip.parameters
