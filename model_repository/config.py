"""Model configurations as frozen dataclasses, turned into ``model_config_pb2`` messages.

Protobuf appears only here, at the Triton boundary; config.pbtxt is written with
``text_format`` from the message, never from a string template.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from vlpserve.dtypes import from_config, from_numpy
from vlpserve.errors import ConfigError, RepositoryError
from vlpserve.layout import CONFIG_FILE


class Runtime(StrEnum):
    """How the graphs run inside Triton."""

    PYTHON = "python"  # ONNX Runtime inside Triton's Python backend (the embedded server)
    ONNXRUNTIME = "onnxruntime"  # Triton's native ONNX Runtime backend (NGC container)


class Device(StrEnum):
    """Where model instances run."""

    CPU = "cpu"
    GPU = "gpu"


class Preprocess(StrEnum):
    """Where images are resized, cropped and normalised (they are decoded on CPU threads)."""

    HOST = "host"  # on the decode threads, bit-equal to the Hugging Face processor
    DEVICE = "device"  # by ONNX Runtime on the instance's device, parity-gated


# Python-backend parameter: Triton hands a model its inputs where the previous model left
# them (a GPU tensor stays on the GPU) instead of copying them to the host first.
KEEP_INPUT_DEVICE = {"FORCE_CPU_ONLY_INPUT_TENSORS": "no"}


def gpu_ids_problem(gpus: Sequence[int]) -> str | None:
    """What is wrong with a list of GPU ids (a negative or a repeated one), or None."""
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        return f"GPU ids must be distinct and >= 0, got {list(gpus)}"
    return None


def check_gpus(gpus: Sequence[int], device: Device, where: str) -> None:
    """ConfigError unless ``gpus`` are valid ids, on the GPU device when there are any."""
    if gpus and device is not Device.GPU:
        raise ConfigError(f"{where}: GPU ids need the GPU device")
    problem = gpu_ids_problem(gpus)
    if problem:
        raise ConfigError(f"{where}: {problem}")


@dataclass(frozen=True, kw_only=True)
class TensorConfig:
    """One input or output: name, numpy dtype name, dims without the batch axis (-1 dynamic)."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False
    # Inputs only: requests whose shapes differ in this tensor may share a batch (the model
    # pads them itself), Triton's allow_ragged_batch.
    ragged: bool = False

    def __post_init__(self) -> None:
        from_numpy(self.dtype)  # raises ConfigError for an unknown type
        if any(d == 0 or d < -1 for d in self.dims):
            raise ConfigError(f"{self.name}: dims must be positive or -1, got {self.dims}")


@dataclass(frozen=True, kw_only=True)
class Batching:
    """Dynamic batching settings, and the queue's policy when one is asked for: at most
    ``max_queue_size`` requests wait, beyond which a request is refused at once; one that
    waits longer than its timeout (``queue_timeout_us``, or the caller's own deadline, which
    overrides it) is dropped without being computed.

    Without either (the default) the config has no queue policy, and that is what keeps
    Triton's batcher off the path that stalls: with any policy (a bound, a timeout, or timeout
    overrides) tritonserver's queue does not support prefetching, and the batcher then waits
    for an idle instance by the count of instances waiting for work, which a finishing
    instance updates only after its responses have gone out. A request sent in that window
    wakes nobody, and the batcher sleeps its default 500 ms (benchmarks/RESULTS.md, issue 22:
    1-4% of batch-1 requests). A caller that gives up still costs nothing: gRPC cancels its
    call, and the batcher drops cancelled requests from its queue."""

    max_queue_delay_us: int = 1000
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    queue_timeout_us: int = 0  # 0: only the caller's deadline

    def __post_init__(self) -> None:
        if self.max_queue_delay_us < 0:
            raise ConfigError("max_queue_delay_us must be >= 0")
        if self.max_queue_size < 0 or self.queue_timeout_us < 0:
            raise ConfigError("max_queue_size and queue_timeout_us must be >= 0")


@dataclass(frozen=True, kw_only=True)
class EnsembleStep:
    """One step of an ensemble: ``input_map`` is step input -> ensemble tensor, and
    ``output_map`` step output -> ensemble tensor."""

    model: str
    input_map: Mapping[str, str]
    output_map: Mapping[str, str]


@dataclass(frozen=True, kw_only=True)
class Accelerator:
    """An execution accelerator (TensorRT or CUDA settings for the ONNX Runtime backend)."""

    name: str
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything config.pbtxt says about one model."""

    name: str
    backend: str | None = None  # "python", "onnxruntime"; None for an ensemble
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    batching: Batching | None = None
    instances: int = 1
    device: Device = Device.CPU
    gpus: tuple[int, ...] = ()  # KIND_GPU: ``instances`` on each of these (default: every GPU)
    parameters: Mapping[str, str] = field(default_factory=dict)
    steps: tuple[EnsembleStep, ...] = ()
    gpu_accelerators: tuple[Accelerator, ...] = ()
    decoupled: bool = False  # responses sent from the model (streaming), not returned

    def __post_init__(self) -> None:
        if self.max_batch_size < 0:
            raise ConfigError(f"{self.name}: max_batch_size must be >= 0")
        if (self.backend is None) == (not self.steps):
            raise ConfigError(f"{self.name}: give a backend or ensemble steps, not both")
        if self.instances < 1:
            raise ConfigError(f"{self.name}: instances must be >= 1")
        if self.batching and self.max_batch_size == 0:
            raise ConfigError(f"{self.name}: dynamic batching needs max_batch_size > 0")
        if any(t.ragged for t in self.outputs):
            raise ConfigError(f"{self.name}: only inputs can be ragged")
        check_gpus(self.gpus, self.device, self.name)

    def to_proto(self) -> pb.ModelConfig:
        """The ``model_config_pb2.ModelConfig`` message."""
        msg = pb.ModelConfig(name=self.name, max_batch_size=self.max_batch_size)
        for spec, target in ((self.inputs, msg.input), (self.outputs, msg.output)):
            for tensor in spec:
                item = target.add()
                item.name = tensor.name
                item.data_type = pb.DataType.Value(from_numpy(tensor.dtype).config)
                item.dims.extend(tensor.dims)
                if tensor.optional:
                    item.optional = True
                if tensor.ragged:
                    item.allow_ragged_batch = True
        for key, value in self.parameters.items():
            msg.parameters[key].string_value = value
        if self.steps:
            msg.platform = "ensemble"
            for step in self.steps:
                item = msg.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
                item.input_map.update(step.input_map)
                item.output_map.update(step.output_map)
            return msg
        msg.backend = self.backend or ""
        if self.decoupled:
            msg.model_transaction_policy.decoupled = True
        kind = (
            pb.ModelInstanceGroup.KIND_GPU
            if self.device is Device.GPU
            else pb.ModelInstanceGroup.KIND_CPU
        )
        msg.instance_group.add(count=self.instances, kind=kind, gpus=list(self.gpus))
        if self.batching:
            batching = msg.dynamic_batching
            batching.max_queue_delay_microseconds = self.batching.max_queue_delay_us
            batching.preferred_batch_size.extend(self.batching.preferred_batch_sizes)
            if self.batching.max_queue_size or self.batching.queue_timeout_us:
                policy = batching.default_queue_policy
                policy.timeout_action = pb.ModelQueuePolicy.REJECT
                policy.allow_timeout_override = True
                policy.max_queue_size = self.batching.max_queue_size
                policy.default_timeout_microseconds = self.batching.queue_timeout_us
        for accel in self.gpu_accelerators:
            item = msg.optimization.execution_accelerators.gpu_execution_accelerator.add(
                name=accel.name
            )
            item.parameters.update(accel.parameters)
        return msg


def to_text(msg: pb.ModelConfig) -> str:
    """config.pbtxt text; ``max_batch_size: 0`` written out although proto3 drops zeros."""
    text = text_format.MessageToString(msg)
    if msg.max_batch_size == 0:
        text = "max_batch_size: 0\n" + text
    return text


def write_config(config: ModelConfig, repo: Path) -> Path:
    """Write ``<repo>/<name>/config.pbtxt``."""
    folder = repo / config.name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    path.write_text(to_text(config.to_proto()))
    return path


def read_config(path: Path) -> pb.ModelConfig:
    """Parse a config.pbtxt into a ``ModelConfig`` message."""
    try:
        return text_format.Parse(path.read_text(), pb.ModelConfig())
    except (OSError, text_format.ParseError) as exc:
        raise RepositoryError(f"cannot parse {path}: {exc}") from exc


def numpy_dtype(data_type: int) -> str:
    """numpy dtype name of a ``model_config_pb2.DataType`` value."""
    return from_config(pb.DataType.Name(data_type)).numpy
