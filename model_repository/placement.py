"""How many instances and threads each model gets: chosen for the machine it serves on.

The fastest layout depends on the cores the server may use, not on the machine that built the
repository: on 2 cores two encoder instances of one ONNX Runtime thread each served int8 CLIP
texts 1.23x and 12 Mpx photos 1.17-1.20x faster than one instance with a thread per core
(benchmarks/RESULTS.md), because one instance's threads stall whenever the client or the
frontend takes a core, while two instances overlap one batch with the next.

So ``repo build`` marks the models it sizes as ``auto`` (parameter ``vlpserve_layout``) unless
told a layout, and writes the plain defaults (one instance, a thread per core) that a bare
tritonserver would use. When ``vlpserve serve`` starts, the launcher gives the ``auto`` ones
a configuration sized by ``auto_layout`` (through an overlay of a local repository, or a reload
from object storage) for the CPUs tritonserver may use (its affinity and its cgroup's quota:
a pinned Kubernetes pod, ``taskset``, ``--server-cpus``). A layout file (``vlpserve tune``
writes one) applied with ``serve --layout`` overrides every model that has a role, and
``repo build --layout`` writes it.

Roles (parameter ``vlpserve_role``): ``encoder`` models run a graph (instances x ONNX Runtime
threads); ``preprocess`` models tokenize or decode (instances, and the decode pool's threads).
Instance counts change on CPU instance groups only; a GPU's instances stay as built.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from vlpserve.errors import ConfigError

LAYOUT_PARAMETER = "vlpserve_layout"
ROLE_PARAMETER = "vlpserve_role"
AUTO = "auto"
BUILT = "built"
# The thread parameters: the Python-backend models' (runtime.params) and Triton's ONNX
# Runtime backend's own.
PYTHON_THREADS = "intra_op_threads"
DECODE_THREADS = "decode_threads"
NATIVE_THREADS = "intra_op_thread_count"
MAX_THREADS = 1024
FILE_VERSION = 1


class Role(StrEnum):
    ENCODER = "encoder"
    PREPROCESS = "preprocess"


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Instances and threads per role, and the batcher's settings (None: as built).

    ``encoder_threads`` and ``decode_threads`` of 0 mean one per CPU the server may use.
    ``max_batch``: the largest batch the batcher forms from separate requests (Triton's
    preferred batch size; one larger request still runs whole, so no caller breaks).
    ``cpus``: the CPU count it was chosen for; ``measured``: what ``vlpserve tune`` saw.
    """

    encoder_instances: int = 1
    encoder_threads: int = 0
    preprocess_instances: int = 1
    decode_threads: int = 0
    max_queue_delay_us: int | None = None
    max_batch: int | None = None
    cpus: int | None = None
    measured: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("encoder_instances", "preprocess_instances"):
            if not 1 <= getattr(self, name) <= 256:
                raise ConfigError(f"layout: {name} must be in 1..256, got {getattr(self, name)}")
        for name in ("encoder_threads", "decode_threads"):
            if not 0 <= getattr(self, name) <= MAX_THREADS:
                raise ConfigError(
                    f"layout: {name} must be in 0..{MAX_THREADS}, got {getattr(self, name)}"
                )
        if self.max_queue_delay_us is not None and not 0 <= self.max_queue_delay_us <= 10**7:
            raise ConfigError(
                f"layout: max_queue_delay_us must be in 0..10000000, got {self.max_queue_delay_us}"
            )
        if self.max_batch is not None and not 1 <= self.max_batch <= 4096:
            raise ConfigError(f"layout: max_batch must be in 1..4096, got {self.max_batch}")

    def describe(self) -> str:
        """One line: what each role gets."""
        threads = self.encoder_threads or "a thread per CPU"
        decode = self.decode_threads or "one per CPU"
        text = (
            f"encoders {self.encoder_instances} instance(s) x {threads} thread(s), "
            f"pre-processing {self.preprocess_instances} instance(s) with {decode} decode "
            "thread(s)"
        )
        if self.max_queue_delay_us is not None:
            text += f", queue delay {self.max_queue_delay_us} us"
        if self.max_batch is not None:
            text += f", batches up to {self.max_batch}"
        return text

    def write(self, path: Path) -> Path:
        """The layout file ``serve --layout`` and ``repo build --layout`` read."""
        body = {"version": FILE_VERSION, **dataclasses.asdict(self)}
        body["measured"] = dict(self.measured)
        Path(path).write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        return Path(path)

    @classmethod
    def read(cls, path: Path | str) -> Layout:
        """A layout file; ConfigError naming the file and what is wrong with it."""
        try:
            body = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"layout file {path}: {exc.strerror or exc}") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"layout file {path}: not JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise ConfigError(f"layout file {path}: expected a JSON object")
        version = body.pop("version", None)
        if version != FILE_VERSION:
            raise ConfigError(f"layout file {path}: version {version!r}, expected {FILE_VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise ConfigError(f"layout file {path}: unknown keys {unknown}; known: {sorted(known)}")
        optional = {"max_queue_delay_us", "max_batch", "cpus"}  # None: as built, unknown
        for key, value in body.items():
            wanted = dict if key == "measured" else int
            if not (value is None and key in optional) and type(value) is not wanted:
                raise ConfigError(f"layout file {path}: {key} must be {wanted.__name__}")
        try:
            return cls(**body)
        except ConfigError as exc:
            raise ConfigError(f"layout file {path}: {exc}") from exc


def auto_layout(cpus: int) -> Layout:
    """The layout for a server that may use ``cpus`` CPUs.

    Encoders: instances x threads = CPUs, with two instances from 2 CPUs on (measured on 2
    cores: module docstring) and about four threads each on larger machines, at most 8
    instances (each holds its own copy of the graph). Pre-processing: one instance whose
    decode pool has a thread per CPU up to 8 CPUs, then one more instance per 8 CPUs, so no
    one Python process's lock bounds it; the decode pool and the encoders share the CPUs
    (an image is decoded while the one before it is encoded).
    """
    cpus = max(1, int(cpus))
    instances = 1 if cpus == 1 else min(8, max(2, cpus // 4))
    preprocess = math.ceil(cpus / 8)
    return Layout(
        encoder_instances=instances,
        encoder_threads=max(1, cpus // instances),
        preprocess_instances=preprocess,
        decode_threads=max(1, cpus // preprocess),
        cpus=cpus,
    )


def marks(role: Role, *, auto: bool) -> dict[str, str]:
    """The parameters ``repo build`` writes into a model's config for the launcher."""
    return {ROLE_PARAMETER: role.value, LAYOUT_PARAMETER: AUTO if auto else BUILT}


def _parameter(config: Any, key: str) -> str:
    return config.parameters[key].string_value if key in config.parameters else ""


def is_auto(config: Any) -> bool:
    """Whether ``repo build`` left this model's layout to the server."""
    return _parameter(config, LAYOUT_PARAMETER) == AUTO


def override(config: Any, layout: Layout, *, cpus: int) -> Any | None:
    """``config`` (a ``model_config_pb2.ModelConfig``) with ``layout`` applied, or None when
    the model has no role or nothing changes. Threads of 0 become ``cpus``."""
    role = _parameter(config, ROLE_PARAMETER)
    if role not in {r.value for r in Role}:
        return None
    from tritonclient.grpc import model_config_pb2 as pb

    changed = pb.ModelConfig()
    changed.CopyFrom(config)
    encoder = role == Role.ENCODER.value
    instances = layout.encoder_instances if encoder else layout.preprocess_instances
    on_cpu = all(g.kind == pb.ModelInstanceGroup.KIND_CPU for g in changed.instance_group)
    for group in changed.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_CPU:
            group.count = instances
    threads = (layout.encoder_threads if encoder else layout.decode_threads) or cpus
    key = ""
    if encoder and on_cpu:
        key = NATIVE_THREADS if changed.backend == "onnxruntime" else PYTHON_THREADS
    elif not encoder and DECODE_THREADS in changed.parameters:
        key = DECODE_THREADS
    if key:  # written out, even where 0 (one per usable CPU) would come to the same
        changed.parameters[key].string_value = str(threads)
    if changed.HasField("dynamic_batching"):
        batching = changed.dynamic_batching
        if layout.max_queue_delay_us is not None:
            batching.max_queue_delay_microseconds = layout.max_queue_delay_us
        if layout.max_batch is not None:
            del batching.preferred_batch_size[:]
            batching.preferred_batch_size.append(min(layout.max_batch, changed.max_batch_size))
    return changed if changed != config else None


def summary(config: Any) -> str:
    """What a model's configuration gives it: instances, threads."""
    from tritonclient.grpc import model_config_pb2 as pb

    groups = ", ".join(
        f"{g.count} {'CPU' if g.kind == pb.ModelInstanceGroup.KIND_CPU else 'GPU'} instance(s)"
        for g in config.instance_group
    )
    threads = [
        f"{key} {_parameter(config, key)}"
        for key in (PYTHON_THREADS, NATIVE_THREADS, DECODE_THREADS)
        if _parameter(config, key)
    ]
    return ", ".join([groups, *threads])
