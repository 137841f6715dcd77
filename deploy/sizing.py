"""What a repository needs from the pod that serves it, read from its configs.

The sizes come from the repository itself (a folder, or the object store it was pushed to):
the Python-backend instances and their tensors set /dev/shm, the graphs' weights (one copy
per instance) set memory, the number of models the start-up time.

Triton's Python backend moves every request's and response's tensors through one shared
memory region per model instance, under /dev/shm: 1 MiB at first, growing in 1 MiB steps
as a batch needs, never shrinking, and fragmenting (seen here: a 4-image batch of 3 MB
PNGs grew the pre-processor's region to 30 MiB). A pod's default /dev/shm is 64 MiB, and
when a region cannot grow the request fails. The need per instance is counted as the
default region plus twice (fragmentation) a full batch of its largest tensors: fixed shapes
exactly, encoded images and texts at the model's own input limits, variable-shape tensors
(token ids, decoder states) at an allowance per instance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpserve.errors import ConfigError, RepositoryError
from vlpserve.layout import CONFIG_FILE
from vlpserve.model_repository.placement import auto_layout, is_auto, override
from vlpserve.serve.launcher import REMOTE_SCHEMES

MIB = 1 << 20
GIB = 1 << 30
SHM_REGION = 1 * MIB  # Triton's default region per Python-backend instance
FRAGMENTATION = 2  # the region grows and never compacts
VARIABLE_ALLOWANCE = 64 * MIB  # per instance with variable-shape tensors
BYTES_DEFAULT = 64 * 1024  # a BYTES tensor with no limit parameter (labels, prompts)
SERVER_MEMORY = 1 * GIB  # tritonserver, its backends, the launcher
INSTANCE_MEMORY = 256 * MIB  # a Python stub: interpreter, numpy, ONNX Runtime
WEIGHTS_FACTOR = 1.5  # ONNX Runtime's arena and the graph's own copy beside the weights
LOAD_S = 20  # start-up per model, CPU
ENGINE_BUILD_S = 300  # a TensorRT engine built at load, per accelerated graph
WEIGHT_SUFFIXES = (".onnx", ".plan", ".data", ".bin")

ReadFn = Callable[[str], str]  # a repository file's text by its relative path

_DTYPE_BYTES = {
    "TYPE_BOOL": 1,
    "TYPE_UINT8": 1,
    "TYPE_INT8": 1,
    "TYPE_UINT16": 2,
    "TYPE_INT16": 2,
    "TYPE_FP16": 2,
    "TYPE_BF16": 2,
    "TYPE_UINT32": 4,
    "TYPE_INT32": 4,
    "TYPE_FP32": 4,
    "TYPE_UINT64": 8,
    "TYPE_INT64": 8,
    "TYPE_FP64": 8,
}


@dataclass(frozen=True)
class ModelShape:
    """One model of the repository, as far as the pod's resources are concerned."""

    name: str
    backend: str  # "python", "onnxruntime", "ensemble", ...
    instances: int
    gpu: bool
    max_batch_size: int
    tensor_bytes: int  # one item of every fixed-shape and bounded tensor, in and out
    variable: bool  # has tensors whose size no config bounds
    weight_bytes: int  # graph files in its version folder
    accelerated: bool  # a TensorRT execution accelerator builds engines at load

    @property
    def shm_bytes(self) -> int:
        """/dev/shm its instances need (Python backend only)."""
        if self.backend != "python":
            return 0
        batch = max(1, self.max_batch_size)
        per_instance = SHM_REGION + FRAGMENTATION * batch * self.tensor_bytes
        if self.variable:
            per_instance += VARIABLE_ALLOWANCE
        return self.instances * per_instance

    @property
    def memory_bytes(self) -> int:
        """Host memory its instances hold (weights once per instance)."""
        if self.backend == "ensemble":
            return 0
        stub = INSTANCE_MEMORY if self.backend == "python" else 0
        weights = 0 if self.gpu else int(WEIGHTS_FACTOR * self.weight_bytes)
        return self.instances * (stub + weights)


@dataclass(frozen=True)
class RepositoryShape:
    """Every model of a repository, and what they need together."""

    models: tuple[ModelShape, ...] = field(default_factory=tuple)

    @property
    def python_instances(self) -> int:
        return sum(m.instances for m in self.models if m.backend == "python")

    @property
    def shm_bytes(self) -> int:
        return _round_up(sum(m.shm_bytes for m in self.models) + 64 * MIB, 64 * MIB)

    @property
    def memory_bytes(self) -> int:
        """Memory limit of the container: the server, every instance, and /dev/shm
        (a memory-backed volume is charged to the container that writes it)."""
        need = SERVER_MEMORY + sum(m.memory_bytes for m in self.models) + self.shm_bytes
        return _round_up(need, 256 * MIB)

    @property
    def disk_bytes(self) -> int:
        """Local disk (ephemeral storage) of a pod: tritonserver copies a repository on
        object storage to a local folder before loading it (every graph's weights), plus
        the launcher's files (the tritonserver log: two files of 8 MiB at most) and room."""
        return _round_up(sum(m.weight_bytes for m in self.models) + 512 * MIB, 64 * MIB)

    def startup_seconds(self, gpus: int) -> int:
        """How long loading every model may take (TensorRT engines built on GPU)."""
        builds = sum(1 for m in self.models if m.accelerated) if gpus else 0
        return 60 + LOAD_S * len(self.models) + ENGINE_BUILD_S * builds


def _round_up(value: int, step: int) -> int:
    return int(math.ceil(value / step) * step)


def shape_of(
    config_text: str, weight_bytes: int, *, where: str = "", cpus: int | None = None
) -> ModelShape:
    """A model's shape from its config.pbtxt text and the size of its graph files; with
    ``cpus``, a model built ``auto`` counts the instances the server gives it on that many
    CPUs (model_repository.placement)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as pb

    try:
        config = text_format.Parse(config_text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"cannot parse {where or 'config'}: {exc}") from exc
    if cpus and is_auto(config):
        config = override(config, auto_layout(cpus), cpus=cpus) or config
    params = {key: value.string_value for key, value in config.parameters.items()}
    backend = config.backend or ("ensemble" if config.platform == "ensemble" else config.platform)
    groups = list(config.instance_group) or [pb.ModelInstanceGroup(count=1)]
    # A group that lists GPU ids has ``count`` instances on each of them.
    instances = sum(max(1, g.count) * max(1, len(g.gpus)) for g in groups)
    gpu = any(g.kind == pb.ModelInstanceGroup.KIND_GPU for g in groups)
    total, variable = 0, False
    for tensor in [*config.input, *config.output]:
        dtype = pb.DataType.Name(tensor.data_type)
        if dtype == "TYPE_STRING":
            items = math.prod(d for d in tensor.dims if d > 0) if tensor.dims else 1
            total += items * _bytes_limit(tensor.name, params)
        elif any(d < 0 for d in tensor.dims):
            variable = True
        else:
            total += _DTYPE_BYTES.get(dtype, 8) * math.prod(tensor.dims)
    optimization = config.optimization.execution_accelerators.gpu_execution_accelerator
    accelerated = any(a.name == "tensorrt" for a in optimization)
    return ModelShape(
        name=config.name,
        backend=backend,
        instances=instances,
        gpu=gpu,
        max_batch_size=config.max_batch_size,
        tensor_bytes=total,
        variable=variable,
        weight_bytes=weight_bytes,
        accelerated=accelerated,
    )


def _bytes_limit(name: str, params: dict[str, str]) -> int:
    """The bound a model puts on one element of a BYTES tensor."""
    key = "max_image_bytes" if name.upper() == "IMAGE" else "max_text_bytes"
    value = params.get(key)
    return int(value) if value and value.isdigit() else BYTES_DEFAULT


def _models(
    files: dict[str, int], read: ReadFn, where: str, cpus: int | None = None
) -> RepositoryShape:
    """``files``: every path (relative, '/'-separated) and its size."""
    shapes = []
    for path in sorted(files):
        parts = path.split("/")
        if len(parts) != 2 or parts[1] != CONFIG_FILE:
            continue
        model = parts[0]
        weights = sum(
            size
            for name, size in files.items()
            if name.startswith(f"{model}/") and name.endswith(WEIGHT_SUFFIXES)
        )
        shapes.append(shape_of(read(path), weights, where=f"{where}/{path}", cpus=cpus))
    if not shapes:
        raise RepositoryError(f"{where}: no model configs found")
    return RepositoryShape(tuple(shapes))


def inspect(
    source: str | Path, *, endpoint_url: str | None = None, cpus: int | None = None
) -> RepositoryShape:
    """The shape of the repository in ``source``: a folder, or ``s3://bucket/prefix``
    (``s3://host:port/bucket/prefix`` as Triton spells a store that is not AWS), served on
    ``cpus`` CPUs (None: as built)."""
    text = str(source)
    if text.startswith("s3://"):
        return _inspect_s3(text, endpoint_url, cpus)
    if text.startswith(REMOTE_SCHEMES):
        raise ConfigError(f"{text}: sizing reads s3:// or a local copy (--sizing-from DIR)")
    root = Path(source)
    if not root.is_dir():
        raise RepositoryError(f"{root} is not a folder")
    files = {
        p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()
    }
    return _models(files, lambda rel: (root / rel).read_text(), str(root), cpus)


def split_triton_s3(url: str) -> tuple[str | None, str, str]:
    """(endpoint URL or None, bucket, prefix) of Triton's S3 spelling: ``s3://bucket/prefix``
    (AWS), ``s3://host:port/bucket/prefix`` (a store over HTTP), and
    ``s3://http://host:port/...`` or ``s3://https://host:port/...`` (the scheme named)."""
    rest = url.removeprefix("s3://")
    scheme = "http"
    for named in ("http", "https"):
        if rest.startswith(f"{named}://"):
            scheme, rest = named, rest.removeprefix(f"{named}://")
    first, _, tail = rest.partition("/")
    if ":" in first:  # host:port, then the bucket
        bucket, _, prefix = tail.partition("/")
        return f"{scheme}://{first}", bucket, prefix.strip("/")
    return None, first, tail.strip("/")


def _inspect_s3(url: str, endpoint_url: str | None, cpus: int | None) -> RepositoryShape:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError as exc:
        raise ConfigError("reading s3:// needs boto3: pip install 'vlpserve[serve]'") from exc
    endpoint, bucket, prefix = split_triton_s3(url)
    endpoint_url = endpoint_url or endpoint
    client = boto3.client("s3", endpoint_url=endpoint_url)
    base = f"{prefix}/" if prefix else ""
    try:
        files = dict(_list(client, bucket, base))

        def read(rel: str) -> str:
            body = client.get_object(Bucket=bucket, Key=base + rel)["Body"].read()
            return str(body.decode())

        return _models(files, read, url, cpus)
    except (BotoCoreError, ClientError) as exc:
        raise RepositoryError(f"cannot read {url}: {exc}") from exc


def _list(client: Any, bucket: str, base: str) -> Iterator[tuple[str, int]]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
    for page in pages:
        for item in page.get("Contents", []):
            yield item["Key"][len(base) :], int(item["Size"])
