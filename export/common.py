"""Family-independent export machinery: torch -> ONNX, ORT fusions, parity, graph IO, report."""

from __future__ import annotations

import logging
import platform
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from vlpserve import __version__
from vlpserve.dtypes import from_onnx
from vlpserve.errors import ConfigError, ExportError, ParityError
from vlpserve.export.report import GraphReport
from vlpserve.layout import ExportFolder
from vlpserve.ort import session
from vlpserve.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)


class Precision(StrEnum):
    """Element type of the exported graph's weights and compute (inputs/outputs stay fp32).

    ``int8``: dynamic quantization of the MatMul and fused Attention weights (QInt8, with
    activations quantized per call): the CPU variant, gated on its accuracy against PyTorch
    fp32 like every other graph.
    """

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


# Minimum per-item cosine similarity between graph and PyTorch (fp32), by precision.
COSINE_TOLERANCE = {Precision.FP32: 0.9999, Precision.FP16: 0.999, Precision.INT8: 0.99}


class Target(StrEnum):
    """Who runs the graphs: ONNX Runtime (its fused operators, any provider) or TensorRT
    (standard operators only, a profile for the engine build; ``export.tensorrt``)."""

    ONNXRUNTIME = "onnxruntime"
    TENSORRT = "tensorrt"


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What to export and how. ``model`` is a hub id or a local checkpoint folder."""

    model: str
    out: Path
    opset: int = 17
    precision: Precision = Precision.FP32
    optimize: bool = True
    keep_plain: bool = False
    # Token id inputs of the text graphs: "int64", or "int32" (TensorRT's int64 support is
    # partial); empty: int32 for the TensorRT target, int64 otherwise.
    ids_dtype: str = ""
    target: Target = Target.ONNXRUNTIME
    max_batch: int = 64  # the TensorRT profile's largest batch

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigError("model must be a hub id or a local folder")
        if not 14 <= self.opset <= 21:
            raise ConfigError(f"opset must be between 14 and 21, got {self.opset}")
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "precision", Precision(self.precision))
        object.__setattr__(self, "target", Target(self.target))
        if not self.ids_dtype:
            ids = "int32" if self.target is Target.TENSORRT else "int64"
            object.__setattr__(self, "ids_dtype", ids)
        if self.ids_dtype not in ("int64", "int32"):
            raise ConfigError(f"ids_dtype must be int64 or int32, got {self.ids_dtype!r}")
        if self.target is Target.TENSORRT:
            from vlpserve.export.tensorrt import OPSETS

            if self.opset not in OPSETS:
                raise ConfigError(f"TensorRT parses opsets {OPSETS.start}-{OPSETS.stop - 1}")
            if self.precision is Precision.INT8:
                raise ConfigError("int8 is the ONNX Runtime CPU variant; TensorRT: fp32 or fp16")
        if self.max_batch < 1:
            raise ConfigError("max_batch must be >= 1")


@dataclass(frozen=True)
class Optimizer:
    """What onnxruntime.transformers' optimizer needs to fuse a transformer's attention."""

    model_type: str  # "clip", "vit", "bert"
    num_heads: int
    hidden_size: int

    @classmethod
    def of(cls, config: Any, model_type: str) -> Optimizer:
        """Hints from a Hugging Face (sub-)config with num_attention_heads and hidden_size."""
        return cls(model_type, int(config.num_attention_heads), int(config.hidden_size))


Cases = dict[str, dict[str, np.ndarray]]  # case name -> the graph's feeds


@dataclass(frozen=True, kw_only=True)
class GraphSpec:
    """One graph to export: the wrapper module, example inputs, axes, optimizer hints, and
    the cases its parity is checked on."""

    name: str
    module: Any  # torch.nn.Module, in eval mode
    example_inputs: dict[str, Any]  # name -> torch.Tensor, in forward() order
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    optimizer: Optimizer
    cases: Cases
    # Non-batch dims of outputs the tracer leaves symbolic (an embedding width, say).
    output_dims: dict[str, tuple[int, ...]] = field(default_factory=dict)
    # The longest token sequence the graph takes (its position embeddings): the TensorRT
    # profile's largest non-batch axis; 0: the example's size.
    max_sequence: int = 0


def batch_axes(*names: str) -> dict[str, dict[int, str]]:
    """Dynamic axes for tensors whose only dynamic axis is the batch."""
    return {name: {0: "batch"} for name in names}


def sequence_axes(*names: str) -> dict[str, dict[int, str]]:
    """Dynamic axes for (batch, sequence) tensors such as token ids."""
    return {name: {0: "batch", 1: "sequence"} for name in names}


def torch_inputs(feeds: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Example inputs for the exporter: the feeds as tensors, in order."""
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in feeds.items()}


@contextmanager
def _wrap(step: str) -> Iterator[None]:
    try:
        yield
    except (ExportError, ConfigError):
        raise
    except Exception as exc:  # library failures become ExportError naming the step
        raise ExportError(f"{step} failed: {exc}") from exc


def export_graph(spec: GraphSpec, path: Path, *, opset: int) -> None:
    """torch.onnx.export (TorchScript exporter) with dynamic axes."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    spec.module.eval()
    with _wrap(f"torch.onnx.export of {spec.name}"), torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python branch on a shape; the parity checks that
        # follow are what tells whether the trace generalises.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            spec.module,
            tuple(spec.example_inputs.values()),
            str(path),
            input_names=list(spec.example_inputs),
            output_names=list(spec.output_names),
            dynamic_axes=spec.dynamic_axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    if spec.output_dims:
        _fix_output_dims(path, spec.output_dims)
    # torch.onnx.export restores the module's training flag; wrappers are built in eval mode,
    # but say it again so a wrapped model never drifts into training behaviour.
    spec.module.eval()


def _fix_output_dims(path: Path, dims: Mapping[str, tuple[int, ...]]) -> None:
    import onnx

    model = onnx.load(str(path))
    for output in model.graph.output:
        for axis, size in enumerate(dims.get(output.name, ()), start=1):
            dim = output.type.tensor_type.shape.dim[axis]
            dim.ClearField("dim_param")
            dim.dim_value = size
    onnx.save(model, str(path))


def optimize_graph(
    spec: GraphSpec,
    src: Path,
    dst: Path,
    *,
    precision: Precision,
    optimize: bool,
    target: Target = Target.ONNXRUNTIME,
) -> dict[str, int]:
    """Apply onnxruntime.transformers fusions (and fp16 conversion); return fusion counts.
    For TensorRT: no fusion (standard operators only), and fp16 keeps the overflow-prone
    operators and each output's head in fp32."""
    from onnxruntime.transformers.optimizer import optimize_model

    if target is Target.TENSORRT:
        optimize = False

    with _wrap(f"ONNX Runtime optimization of {spec.name}"):
        model = (
            optimize_model(
                str(src),
                model_type=spec.optimizer.model_type,
                num_heads=spec.optimizer.num_heads,
                hidden_size=spec.optimizer.hidden_size,
                opt_level=0,  # graph fusions only: the file stays portable across providers
                only_onnxruntime=False,
            )
            if optimize
            else None
        )
        if model is None:
            import onnx
            from onnxruntime.transformers.onnx_model import OnnxModel

            model = OnnxModel(onnx.load(str(src)))
            fusions: dict[str, int] = {}
        else:
            fusions = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
        if precision is Precision.FP16 and target is Target.TENSORRT:
            import onnx
            from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

            from vlpserve.export.tensorrt import FP32_OPS, head_nodes

            # Element types of every value, which the converter needs to put casts around the
            # ops kept in fp32: ONNX's own inference, since the graph has standard operators
            # only. ORT's symbolic inference failed on SigLIP's graphs, and without the types
            # a LayerNormalization got an fp16 input beside an fp32 scale (ORT refused it).
            model.model = onnx.shape_inference.infer_shapes(model.model)
            model.convert_float_to_float16(
                use_symbolic_shape_infer=False,
                keep_io_types=True,
                op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS],
                node_block_list=head_nodes(model.model),
            )
        elif precision is Precision.FP16:
            model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(dst))
    if precision is Precision.INT8:
        with _wrap(f"int8 quantization of {spec.name}"):
            quantize_int8(dst)
    return fusions


def quantize_int8(path: Path) -> None:
    """Replace an fp32 graph by its dynamically quantized (QInt8 weights) version.

    Weights take 7 bits (``reduce_range``): x86 CPUs without VNNI multiply u8 activations by
    s8 weights with an instruction that saturates 16-bit sums, and a graph quantized to 8
    bits then loses accuracy there whatever the machine that exported it. Measured on a
    2-core AVX2 EPYC (no VNNI): tiny SigLIP's text graph at cosine 0.943-0.963 to PyTorch with
    8-bit weights, 0.9996-0.9997 with 7 (benchmarks/RESULTS.md)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_suffix(".int8.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # it advises "pre-processing" on the root logger every time
    try:
        quantize_dynamic(
            str(path),
            str(quantized),
            weight_type=QuantType.QInt8,
            reduce_range=True,
            op_types_to_quantize=["MatMul", "Attention"],
            # Fused contrib ops defeat ONNX shape inference; their tensors are fp32.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)
    quantized.replace(path)


def graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs of an ONNX graph: name, numpy dtype, shape (str for dynamic axes)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(values: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
            out.append(
                {"name": value.name, "dtype": from_onnx(tensor.elem_type).numpy, "shape": shape}
            )
        return out

    initializers = {init.name for init in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return describe(inputs), describe(graph.output)


def compare(actual: np.ndarray, expected: np.ndarray) -> dict[str, float]:
    """Per-item cosine (minimum over the batch) and max abs diff of two batched outputs."""
    a = actual.reshape(actual.shape[0], -1).astype(np.float64)
    e = expected.reshape(expected.shape[0], -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(e, axis=1)
    cosine = np.sum(a * e, axis=1) / np.maximum(norms, 1e-12)
    return {"cosine_min": float(cosine.min()), "max_abs_diff": float(np.abs(a - e).max())}


def check_parity(spec: GraphSpec, path: Path, *, tolerance: float) -> dict[str, dict[str, float]]:
    """Run every case through the graph and through PyTorch; raise ParityError on a miss.

    Returns ``{case: {cosine_min, max_abs_diff}}`` with the worst output of each case.
    """
    import torch

    graph = session(path)
    figures: dict[str, dict[str, float]] = {}
    for case, feeds in spec.cases.items():
        with _wrap(f"running {spec.name} on '{case}'"):
            got = graph.run(list(spec.output_names), feeds)
        with torch.no_grad():
            # Positionally, in example_inputs order: forward() may take *past tensors.
            ref = spec.module(*[torch.from_numpy(feeds[name]) for name in spec.example_inputs])
        refs = ref if isinstance(ref, tuple) else (ref,)
        worst = {"cosine_min": 1.0, "max_abs_diff": 0.0}
        for out_got, out_ref in zip(got, refs, strict=True):
            numbers = compare(np.asarray(out_got), out_ref.float().numpy())
            worst["cosine_min"] = min(worst["cosine_min"], numbers["cosine_min"])
            worst["max_abs_diff"] = max(worst["max_abs_diff"], numbers["max_abs_diff"])
        logger.info("%s parity on %s: %s", spec.name, case, worst)
        if not worst["cosine_min"] >= tolerance:  # also catches NaN
            raise ParityError(
                spec.name,
                case,
                cosine_min=worst["cosine_min"],
                max_abs_diff=worst["max_abs_diff"],
                cosine_tolerance=tolerance,
            )
        figures[case] = worst
    return figures


def export_and_check(
    spec: GraphSpec, options: ExportOptions, progress: ProgressFn = no_progress
) -> GraphReport:
    """Export one graph, optimize it, check parity, and describe it for the report."""
    folder = ExportFolder(options.out)
    plain = folder.plain_graph(spec.name)
    final = folder.graph(spec.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    progress(f"{spec.name}: exporting")
    export_graph(spec, plain, opset=options.opset)
    tolerance = COSINE_TOLERANCE[options.precision]
    progress(f"{spec.name}: checking the plain graph")
    check_parity(spec, plain, tolerance=COSINE_TOLERANCE[Precision.FP32])
    progress(f"{spec.name}: optimizing")
    fusions = optimize_graph(
        spec,
        plain,
        final,
        precision=options.precision,
        optimize=options.optimize,
        target=options.target,
    )
    progress(f"{spec.name}: checking the final graph")
    parity = check_parity(spec, final, tolerance=tolerance)
    profile: dict[str, dict[str, list[int]]] = {}
    if options.target is Target.TENSORRT:
        from vlpserve.export.tensorrt import lint
        from vlpserve.export.tensorrt import profile as trt_profile

        problems = lint(final)
        if problems:
            raise ExportError(f"{spec.name}: not a TensorRT graph: " + "; ".join(problems[:5]))
        shapes = {name: tuple(t.shape) for name, t in spec.example_inputs.items()}
        profile = trt_profile(
            shapes, spec.dynamic_axes, max_batch=options.max_batch, max_sequence=spec.max_sequence
        )
    if not options.keep_plain:
        plain.unlink()
    inputs, outputs = graph_io(final)
    return GraphReport(
        path=str(final.relative_to(options.out)),
        inputs=inputs,
        outputs=outputs,
        opset=options.opset,
        size_bytes=final.stat().st_size,
        precision=options.precision.value,
        fusions=fusions,
        parity=parity,
        plain_path=str(plain.relative_to(options.out)) if options.keep_plain else None,
        target=options.target.value,
        profile=profile,
    )


def library_versions() -> dict[str, str]:
    """Versions of the libraries an export depends on, for the report."""
    from importlib.metadata import PackageNotFoundError, version

    names = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "numpy")
    found = {"python": platform.python_version(), "vlpserve": __version__}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    # The modules imported, where two distributions install one (onnxruntime and -gpu) or a
    # folder put first on the path shadows the environment's (benchmarks/gpu_carry.py).
    import numpy
    import onnxruntime

    found["numpy"] = numpy.__version__
    found["onnxruntime"] = onnxruntime.__version__
    return found


def export_graphs(
    specs: Sequence[GraphSpec], options: ExportOptions, progress: ProgressFn = no_progress
) -> dict[str, GraphReport]:
    """Export and check every graph into ``options.out``; their reports by name."""
    options.out.mkdir(parents=True, exist_ok=True)
    return {spec.name: export_and_check(spec, options, progress) for spec in specs}


def save_processing(
    options: ExportOptions, tokenizer: Any, processor: Any, progress: ProgressFn = no_progress
) -> None:
    """The checkpoint's fast tokenizer and image processor, where the export folder keeps them."""
    progress("saving tokenizer and image processor")
    folder = ExportFolder(options.out)
    tokenizer.save_pretrained(folder.tokenizer)
    processor.save_pretrained(folder.preprocessor)
