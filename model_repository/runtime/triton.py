"""Helpers shared by the TritonPythonModel classes (imports Triton's pb_utils)."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

logger = logging.getLogger(__name__)


class ModelArgs:
    """What Triton passes to ``initialize``: config, parameters, version folder, device."""

    def __init__(self, args: dict[str, str]) -> None:
        self.config: dict[str, Any] = json.loads(args["model_config"])
        self.name: str = args["model_name"]
        self.version_dir = Path(args["model_repository"]) / args["model_version"]
        self.on_gpu = args.get("model_instance_kind") == "GPU"
        self.device_id = int(args.get("model_instance_device_id", 0))

    def parameter(self, key: str, default: str | None = None) -> str:
        value = self.config.get("parameters", {}).get(key, {}).get("string_value")
        if value is None:
            if default is None:
                raise ValueError(f"{self.name}: parameter {key!r} missing from config.pbtxt")
            return default
        return str(value)

    def output_dtype(self, name: str) -> np.dtype:
        for output in self.config["output"]:
            if output["name"] == name:
                return np.dtype(pb_utils.triton_string_to_numpy(output["data_type"]))
        raise ValueError(f"{self.name}: no output {name!r}")


def invalid_argument(message: str) -> Any:
    """An error response with INVALID_ARGUMENT status."""
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG)
    )


def internal_error(message: str) -> Any:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message))


def input_array(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"input {name!r} is missing")
    return np.asarray(tensor.as_numpy())


def response(outputs: dict[str, np.ndarray]) -> Any:
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]
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
        family_type = getattr(pb_utils, "MetricFamily", None)
        if family_type is None:
            logger.warning("%s: no custom metrics in this Python backend", model)
            return
        for name in self.NAMES:
            family = family_type(
                name=f"vlpserve_generation_{name}_total",
                description=f"Generation engine {name} per phase",
                kind=family_type.COUNTER,
            )
            self._families.append(family)
            for phase in phases:
                self._metrics[name, phase] = family.Metric(labels={"model": model, "phase": phase})

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
