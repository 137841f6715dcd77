"""Graphs for TensorRT: ``vlpserve export ... --target tensorrt``.

TensorRT's ONNX parser takes standard operators only: onnxruntime's fused contrib operators
(Attention, SkipLayerNormalization, FastGelu, ...) are left out, so the graph keeps the
exporter's own operators. Every dynamic axis has a name, and each graph's optimization
profile (min/opt/max of every dynamic axis) is written in the export report for the engine
build. In fp16, the spots where CLIP is known to overflow under TensorRT stay fp32
(NVIDIA/TensorRT issues 2564 and 1954): normalisation statistics, softmax, and each output's
head, from the last projection through the L2 normalisation.

``lint`` checks a graph against what TensorRT's parser supports; the export refuses a graph
that fails it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

OPSETS = range(13, 18)  # the ONNX opsets TensorRT's parser documents (8.5: up to 17)

# Operators onnx-tensorrt documents as supported (docs/operators.md, TensorRT 8.5), plus
# LayerNormalization (parsed since TensorRT 8.6; opset 17 exports it as one operator).
TENSORRT_OPS = frozenset(
    [
        "Abs",
        "Acos",
        "Acosh",
        "Add",
        "And",
        "ArgMax",
        "ArgMin",
        "Asin",
        "Asinh",
        "Atan",
        "Atanh",
        "AveragePool",
        "BatchNormalization",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Conv",
        "ConvTranspose",
        "Cos",
        "Cosh",
        "CumSum",
        "DepthToSpace",
        "DequantizeLinear",
        "Div",
        "Dropout",
        "Einsum",
        "Elu",
        "Equal",
        "Erf",
        "Exp",
        "Expand",
        "EyeLike",
        "Flatten",
        "Floor",
        "Gather",
        "GatherElements",
        "GatherND",
        "Gemm",
        "GlobalAveragePool",
        "GlobalLpPool",
        "GlobalMaxPool",
        "Greater",
        "GreaterOrEqual",
        "GridSample",
        "GRU",
        "HardSwish",
        "HardSigmoid",
        "Identity",
        "If",
        "ImageScaler",
        "InstanceNormalization",
        "IsNaN",
        "LayerNormalization",
        "LeakyRelu",
        "Less",
        "LessOrEqual",
        "Log",
        "LogSoftmax",
        "Loop",
        "LRN",
        "LSTM",
        "LpNormalization",
        "LpPool",
        "MatMul",
        "Max",
        "MaxPool",
        "Mean",
        "MeanVarianceNormalization",
        "Min",
        "Mod",
        "Mul",
        "Neg",
        "NonMaxSuppression",
        "NonZero",
        "Not",
        "OneHot",
        "Or",
        "Pad",
        "ParametricSoftplus",
        "Pow",
        "PRelu",
        "QuantizeLinear",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "Range",
        "Reciprocal",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceProd",
        "ReduceSum",
        "ReduceSumSquare",
        "Relu",
        "Reshape",
        "Resize",
        "ReverseSequence",
        "RNN",
        "RoiAlign",
        "Round",
        "ScaledTanh",
        "Scan",
        "Scatter",
        "ScatterElements",
        "ScatterND",
        "Selu",
        "Shape",
        "Shrink",
        "Sigmoid",
        "Sign",
        "Sin",
        "Sinh",
        "Size",
        "Slice",
        "Softmax",
        "Softplus",
        "Softsign",
        "SpaceToDepth",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Sum",
        "Tan",
        "Tanh",
        "ThresholdedRelu",
        "Tile",
        "TopK",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Upsample",
        "Where",
        "Xor",
    ]
)

# Kept in fp32 in fp16 graphs: statistics and exponentials whose intermediates pass 65504.
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "ReduceSum", "Pow", "Sqrt")
PROJECTIONS = ("MatMul", "Gemm")
OPT_BATCH = 8


def head_nodes(model: Any) -> list[str]:
    """Names of the nodes between each graph output and the last projection before it
    (inclusive): an embedding's projection and its L2 normalisation, which overflow fp16
    for large activations although the result is a unit vector."""
    producer = {out: node for node in model.graph.node for out in node.output}
    found: list[str] = []
    stack = [producer[o.name] for o in model.graph.output if o.name in producer]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if not node.name:
            node.name = f"vlpserve_head_{len(seen)}"
        found.append(node.name)
        if node.op_type in PROJECTIONS:
            continue  # the projection is the head's start
        stack.extend(producer[i] for i in node.input if i in producer)
        if len(seen) > 64:  # not an embedding head: outputs straight from a deep graph
            return []
    return found


def lint(path: Path | str) -> list[str]:
    """What TensorRT's parser would refuse in the graph at ``path``: no problem, no item."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    problems = []
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        problems.append(f"the ONNX checker: {exc}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset not in OPSETS:
        problems.append(f"opset {opset}: TensorRT parses {OPSETS.start}-{OPSETS.stop - 1}")
    for domain in sorted({o.domain for o in model.opset_import} - {"", "ai.onnx"}):
        problems.append(f"operators of domain {domain!r} (not standard ONNX)")
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.name or node.op_type}: {node.domain}.{node.op_type}")
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{node.name or node.op_type}: {node.op_type} is not supported")
    for value in [*model.graph.input, *model.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.dim_param and dim.dim_value <= 0:
                problems.append(f"{value.name}: axis {axis} is dynamic without a name")
    return problems


def profile(
    example_shapes: dict[str, tuple[int, ...]],
    dynamic_axes: dict[str, dict[int, str]],
    *,
    max_batch: int,
    max_sequence: int,
) -> dict[str, dict[str, list[int]]]:
    """The optimization profile of a graph's inputs: min, opt and max shapes. The batch
    axis runs from 1 to ``max_batch`` (opt 8); other dynamic axes from 1 to
    ``max_sequence`` or the example's size if larger, opt the example's size."""
    found = {}
    for name, shape in example_shapes.items():
        axes = dynamic_axes.get(name, {})
        low, opt, high = list(shape), list(shape), list(shape)
        for axis, axis_name in axes.items():
            if axis_name == "batch":
                low[axis], opt[axis], high[axis] = 1, min(OPT_BATCH, max_batch), max_batch
            else:
                low[axis], high[axis] = 1, max(shape[axis], max_sequence)
        found[name] = {"min": low, "opt": opt, "max": high}
    return found
