"""Python-backend model that runs an exported ONNX graph with ONNX Runtime.

The embedded tritonserver (nvidia-pytriton) ships only the Python backend; this model gives
it the same contract as Triton's native ONNX Runtime backend: requests whose non-batch
shapes agree are concatenated and run as one batch, then split back.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnxruntime as ort

from vlpserve.model_repository.runtime.triton import (
    ModelArgs,
    input_array,
    internal_error,
    invalid_argument,
    response,
)

logger = logging.getLogger(__name__)

GRAPH_FILE = "model.onnx"


class TritonPythonModel:
    """ONNX Runtime session over ``<version>/model.onnx``."""

    def initialize(self, args: dict[str, str]) -> None:
        model = ModelArgs(args)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(model.parameter("intra_op_threads", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list[Any] = ["CPUExecutionProvider"]
        if model.on_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": model.device_id}))
        self.session = ort.InferenceSession(
            str(model.version_dir / GRAPH_FILE), options, providers=providers
        )
        self.inputs = [i["name"] for i in model.config["input"]]
        self.outputs = [o["name"] for o in model.config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                feeds = {name: input_array(request, name) for name in self.inputs}
            except ValueError as exc:
                responses[index] = invalid_argument(str(exc))
                continue
            key = tuple(feeds[name].shape[1:] for name in self.inputs)
            groups.setdefault(key, []).append((index, feeds))
        for members in groups.values():
            counts = [len(next(iter(feeds.values()))) for _, feeds in members]
            batch = {
                name: np.concatenate([feeds[name] for _, feeds in members]) for name in self.inputs
            }
            try:
                results = self.session.run(self.outputs, batch)
            except Exception as exc:  # ORT errors are per batch: answer each request with it
                logger.exception("inference failed")
                for index, _ in members:
                    responses[index] = internal_error(f"inference failed: {exc}")
                continue
            offsets = np.cumsum([0, *counts])
            for (index, _), start, end in zip(members, offsets[:-1], offsets[1:], strict=True):
                responses[index] = response(
                    {
                        name: result[start:end]
                        for name, result in zip(self.outputs, results, strict=True)
                    }
                )
        return responses
