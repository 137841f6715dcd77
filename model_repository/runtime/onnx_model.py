"""Python-backend model that runs an exported ONNX graph with ONNX Runtime.

The embedded tritonserver (nvidia-pytriton) ships only the Python backend; this model gives
it the same contract as Triton's native ONNX Runtime backend: requests whose non-batch
shapes agree are concatenated and run as one batch, then split back. Inputs named in the
``pad_values`` parameter (token ids and masks, marked ragged in config.pbtxt) are first
padded along axis 1 to the longest of the batch, so texts of different lengths share a batch.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from vlpserve.contract import PARAM_PAD_VALUES
from vlpserve.model_repository.runtime.sessions import ort_session
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
        self.session = ort_session(
            model.version_dir / GRAPH_FILE,
            on_gpu=model.on_gpu,
            device_id=model.device_id,
            threads=int(model.parameter("intra_op_threads", "0")),
            spin=model.parameter("intra_op_spinning", "1") == "1",
        )
        self.inputs = [i["name"] for i in model.config["input"]]
        self.outputs = [o["name"] for o in model.config["output"]]
        self.pad_values: dict[str, int] = json.loads(model.parameter(PARAM_PAD_VALUES, "{}"))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        groups: dict[tuple[tuple[int, ...], ...], list[tuple[int, dict[str, np.ndarray]]]] = {}
        for index, request in enumerate(requests):
            try:
                feeds = {name: input_array(request, name) for name in self.inputs}
            except ValueError as exc:
                responses[index] = invalid_argument(str(exc))
                continue
            key = tuple(
                feeds[name].shape[2:] if name in self.pad_values else feeds[name].shape[1:]
                for name in self.inputs
            )
            groups.setdefault(key, []).append((index, feeds))
        for members in groups.values():
            counts = [len(next(iter(feeds.values()))) for _, feeds in members]
            batch = {
                name: self._concatenate(name, [feeds[name] for _, feeds in members])
                for name in self.inputs
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

    def _concatenate(self, name: str, arrays: list[np.ndarray]) -> np.ndarray:
        pad = self.pad_values.get(name)
        if pad is None or len({a.shape[1] for a in arrays}) == 1:
            return np.concatenate(arrays)
        length = max(a.shape[1] for a in arrays)
        rows = sum(len(a) for a in arrays)
        out = np.full((rows, length, *arrays[0].shape[2:]), pad, dtype=arrays[0].dtype)
        row = 0
        for array in arrays:
            out[row : row + len(array), : array.shape[1]] = array
            row += len(array)
        return out
