"""Python-backend model that runs an exported ONNX graph with ONNX Runtime.

The embedded tritonserver (nvidia-pytriton) ships only the Python backend; this model gives
it the same contract as Triton's native ONNX Runtime backend: requests whose non-batch
shapes agree are concatenated and run as one batch, then split back. Inputs named in the
``pad_values`` parameter (token ids and masks, marked ragged in config.pbtxt) are first
padded along axis 1 to the longest of the batch, so texts of different lengths share a batch.
The other inputs arrive by DLPack as ONNX Runtime values, without a copy, on the device
Triton hands them over on: the pixels that a ``--preprocess device`` pre-processor left on
the GPU stay there, and several requests' rows are joined there. The batch is bound to the
device once and the outputs come back once (IO binding); they must reach the host anyway,
since they are the ensemble's answer to the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vlpserve.model_repository.runtime.batched import BatchedModel, Outputs, split_rows
from vlpserve.model_repository.runtime.device import (
    Device,
    DeviceOps,
    Feed,
    host_run,
    placed,
    shape_of,
)
from vlpserve.model_repository.runtime.errors import InvalidRequest
from vlpserve.model_repository.runtime.params import GraphParams
from vlpserve.model_repository.runtime.triton import request_values

Feeds = dict[str, Feed]


class TritonPythonModel(BatchedModel[Feeds]):
    """ONNX Runtime session over ``<version>/model.onnx``."""

    def setup(self) -> None:
        params = self.args.params(GraphParams)
        self.session = self.args.session(self.args.folder.graph(), params)
        self.device = Device.of(self.session)
        self.ops = DeviceOps(self.session)
        self.inputs = self.args.inputs
        self.outputs = self.args.outputs
        self.pad_values = params.pad_values

    def parse(self, request: Any) -> Feeds:
        found = request_values(request, self.inputs, on_host=self.pad_values)
        for name, value in found.items():
            if value is None:
                raise InvalidRequest(f"input {name!r} is missing")
        return found

    def run(self, items: list[Feeds]) -> Sequence[Outputs | Exception]:
        results: list[Outputs | Exception] = [ValueError("not run")] * len(items)
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, feeds in enumerate(items):
            key = tuple(
                shape_of(feeds[name])[2 if name in self.pad_values else 1 :] for name in self.inputs
            )
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            batch = {
                name: self._concatenate(name, [items[i][name] for i in members])
                for name in self.inputs
            }
            try:
                outputs = host_run(self.session, batch, self.device, self.outputs)
            except Exception as exc:  # one failing group fails its requests, not the others
                for index in members:
                    results[index] = exc
                continue
            counts = [shape_of(next(iter(items[i].values())))[0] for i in members]
            for index, part in zip(members, split_rows(outputs, counts), strict=True):
                results[index] = part
        return results

    def _concatenate(self, name: str, arrays: list[Any]) -> Feed:
        pad = self.pad_values.get(name)
        if pad is None:  # device values: joined where they are
            return self.ops.rows([placed(value, self.device) for value in arrays])
        if len({a.shape[1] for a in arrays}) == 1:
            return np.concatenate(arrays)
        length = max(a.shape[1] for a in arrays)
        rows = sum(len(a) for a in arrays)
        out = np.full((rows, length, *arrays[0].shape[2:]), pad, dtype=arrays[0].dtype)
        row = 0
        for array in arrays:
            out[row : row + len(array), : array.shape[1]] = array
            row += len(array)
        return out
