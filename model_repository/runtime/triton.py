"""Helpers shared by the TritonPythonModel classes (imports Triton's pb_utils)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import triton_python_backend_utils as pb_utils

from vlpserve.layout import ModelFolder
from vlpserve.model_repository.runtime.params import ModelParams, SessionParams
from vlpserve.ort import session

logger = logging.getLogger(__name__)

P = TypeVar("P", bound=ModelParams)


class ModelArgs:
    """What Triton passes to ``initialize``: config, parameters, version folder, device."""

    def __init__(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.name: str = args["model_name"]
        self.folder = ModelFolder(Path(args["model_repository"]) / args["model_version"])
        self.on_gpu = args.get("model_instance_kind") == "GPU"
        self.device_id = int(args.get("model_instance_device_id", 0))

    def params(self, kind: type[P]) -> P:
        """The model's parameters as the builder wrote them (see runtime.params)."""
        found = self.config.get("parameters", {})
        return kind.from_config({k: v["string_value"] for k, v in found.items()}, self.name)

    def session(self, path: Path, params: SessionParams) -> Any:
        """An ONNX Runtime session on this instance's device, as ``params`` say."""
        return session(
            path,
            on_gpu=self.on_gpu,
            device_id=self.device_id,
            threads=params.intra_op_threads,
            spin=params.intra_op_spinning,
            tensorrt=params.tensorrt or None,
            engine_cache=self.folder.engine_cache,
        )

    @property
    def inputs(self) -> list[str]:
        return [i["name"] for i in self.config["input"]]

    @property
    def outputs(self) -> list[str]:
        return [o["name"] for o in self.config["output"]]


def invalid_argument(message: str) -> Any:
    """An error response with INVALID_ARGUMENT status."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal_error(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def request_arrays(request: Any, names: list[str]) -> dict[str, np.ndarray | None]:
    """A request's inputs as numpy arrays, by name (None for an absent optional one)."""
    found: dict[str, np.ndarray | None] = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        found[name] = None if tensor is None else np.asarray(tensor.as_numpy())
    return found


def request_values(request: Any, names: list[str], on_host: Collection[str] = ()) -> dict[str, Any]:
    """A request's inputs by name, as ONNX Runtime values on the device Triton hands them
    over on (by DLPack, no copy: a GPU tensor that an ensemble's previous model left on the
    GPU stays there), ``on_host`` ones as numpy arrays; None for an absent optional one.
    The values borrow the request's memory: use them within ``execute``."""
    import onnxruntime as ort

    found: dict[str, Any] = {}
    for name in names:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            found[name] = None
        elif name in on_host:
            found[name] = np.asarray(tensor.as_numpy())
        else:
            found[name] = ort.OrtValue.from_dlpack(tensor.to_dlpack())
    return found


def output_tensor(name: str, value: Any) -> Any:
    """A response tensor from a numpy array, or from an ONNX Runtime value by DLPack (a
    value on the GPU goes to the next model of an ensemble without a host round trip)."""
    if isinstance(value, np.ndarray):
        return pb_utils.Tensor(name, value)
    return pb_utils.Tensor.from_dlpack(name, value)


def response(outputs: Mapping[str, Any]) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[output_tensor(name, value) for name, value in outputs.items()]
    )


class PhaseMetrics:
    """Per-phase counters on Triton's metrics endpoint, for work Triton's own statistics do
    not see (a decoupled model's background engine): ``vlpserve_generation_seconds_total``,
    ``_calls_total`` and ``_rows_total``, labelled by model and phase.

    Calls come from several threads; a lock keeps one update at a time. Where the Python
    backend has no custom metrics API the counters are skipped (logged once).
    """

    NAMES = ("seconds", "calls", "rows")

    def __init__(self, model: str, phases: tuple[str, ...]) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[tuple[str, str], Any] = {}
        self._families: list[Any] = []  # a Metric fails once its family is garbage-collected
        self._gauge: Any = None
        family_type = getattr(pb_utils, "MetricFamily", None)
        if family_type is None:
            logger.warning("%s: no custom metrics in this Python backend", model)
            return
        gauge = family_type(
            name="vlpserve_generation_outstanding",
            description="Generation requests admitted and not finished",
            kind=family_type.GAUGE,
        )
        self._families.append(gauge)
        self._gauge = gauge.Metric(labels={"model": model})
        for name in self.NAMES:
            family = family_type(
                name=f"vlpserve_generation_{name}_total",
                description=f"Generation engine {name} per phase",
                kind=family_type.COUNTER,
            )
            self._families.append(family)
            for phase in phases:
                self._metrics[name, phase] = family.Metric(labels={"model": model, "phase": phase})

    def outstanding(self, count: int) -> None:
        """Requests admitted and not finished (``vlpserve_generation_outstanding``): the
        launcher waits for 0 before it stops the server."""
        if self._gauge is not None:
            with self._lock:
                try:
                    self._gauge.set(count)
                except Exception:  # statistics must never fail a request
                    logger.exception("custom metrics failed")
                    self._gauge = None

    def observe(self, phase: str, seconds: float, rows: int) -> None:
        if not self._metrics:
            return
        with self._lock:
            try:
                for name, value in zip(self.NAMES, (seconds, 1, rows), strict=True):
                    self._metrics[name, phase].increment(value)
            except Exception:  # statistics must never fail a request: stop counting
                logger.exception("custom metrics failed; no longer counting")
                self._metrics.clear()
