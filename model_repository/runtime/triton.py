"""Helpers shared by the TritonPythonModel classes (imports Triton's pb_utils)."""

from __future__ import annotations

import json
import logging
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
