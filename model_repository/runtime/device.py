"""Tensors kept where a graph runs: ONNX Runtime values (``OrtValue``) bound by IO binding.

``bound_run`` feeds host arrays once (ONNX Runtime copies them to the session's device) and
device values as they are, and leaves the outputs on the device except those asked for on
the host. ``DeviceOps`` reshapes device values without a host round trip, by running tiny
ONNX graphs (Gather, Pad, Concat) on the same device: the BLIP decoder's caches move from one
step to the next, and are re-batched when requests join or leave, without ever being copied
through the host. On CPU (CI) the same code runs with the values in host memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlpserve.ort import CUDA, TENSORRT, session

_OPSET = 17


@dataclass(frozen=True)
class Device:
    """Where a session's values live: ONNX Runtime's device name and id."""

    kind: str = "cpu"  # "cpu" or "cuda"
    id: int = 0

    @classmethod
    def of(cls, session: Any) -> Device:
        """The device of a session's first provider (CUDA, or TensorRT on CUDA, or CPU)."""
        first = session.get_providers()[0]
        if first in (CUDA, TENSORRT):
            options = session.get_provider_options().get(first, {})
            return cls("cuda", int(options.get("device_id", 0)))
        return cls()


Value = Any  # onnxruntime.OrtValue
Feed = np.ndarray | Value


def bound_run(
    session: Any,
    feeds: Mapping[str, Feed],
    device: Device,
    *,
    on_host: Sequence[str] = (),
    outputs: Sequence[str] | None = None,
) -> dict[str, Value]:
    """Run ``session`` by IO binding: numpy feeds are copied to ``device`` once, values are
    bound as they are; outputs stay on ``device`` except ``on_host`` (copied back once)."""
    binding = session.io_binding()
    for name, value in feeds.items():
        if isinstance(value, np.ndarray):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        else:
            binding.bind_ortvalue_input(name, value)
    names = list(outputs) if outputs is not None else [o.name for o in session.get_outputs()]
    for name in names:
        if name in on_host:
            binding.bind_output(name, "cpu")
        else:
            binding.bind_output(name, device.kind, device.id)
    session.run_with_iobinding(binding)
    return dict(zip(names, binding.get_outputs(), strict=True))


def host_run(
    session: Any, feeds: Mapping[str, Feed], device: Device, outputs: Sequence[str]
) -> dict[str, np.ndarray]:
    """``outputs`` of ``session`` as host arrays: the feeds go to ``device`` once and the
    outputs come back once (what a model whose answer goes to the client needs)."""
    found = bound_run(session, feeds, device, on_host=outputs, outputs=outputs)
    return {name: found[name].numpy() for name in outputs}


_DLPACK_CPU, _DLPACK_CUDA = 1, 2


def _element_type(value: Value) -> int:
    """ONNX's element type of a value: "tensor(float16)" -> TensorProto.FLOAT16, and so on."""
    from onnx import TensorProto

    name = str(value.data_type()).removeprefix("tensor(").removesuffix(")")
    found = getattr(TensorProto, name.upper(), None)
    if not isinstance(found, int):
        raise TypeError(f"no ONNX element type for {value.data_type()}")
    return found


def placed(value: Value, device: Device) -> Value:
    """``value`` where a session on ``device`` can take it: as it is when it is there or on
    the host (ONNX Runtime copies from there), else through the host (a GPU tensor that an
    instance on another GPU left)."""
    import onnxruntime as ort

    kind, index = value.__dlpack_device__()
    here = kind == _DLPACK_CPU or (device.kind, kind, index) == ("cuda", _DLPACK_CUDA, device.id)
    return value if here else ort.OrtValue.ortvalue_from_numpy(value.numpy())


def shape_of(value: Feed) -> tuple[int, ...]:
    """The shape of a host array or a device value."""
    return tuple(value.shape) if isinstance(value, np.ndarray) else tuple(value.shape())


class DeviceOps:
    """Row and column selection, left padding and concatenation of device values: the
    decoder caches (rows, heads, positions, dim), each one ONNX Runtime call for a whole list
    of values; and the rows of several requests' values joined into one batch."""

    def __init__(self, like: Any) -> None:
        """Runs on the device of session ``like``, by the CUDA provider there (never
        TensorRT: it would build an engine per shape) or on CPU."""
        self.device = Device.of(like)
        self.sessions: dict[tuple[str, int, tuple[int, ...], int], Any] = {}
        self.calls = 0  # reshaping calls, for tests and statistics

    def take(self, values: list[Value], index: Sequence[int], axis: int) -> list[Value]:
        """``value[index]`` along ``axis`` (0: rows, 2: positions) for every value."""
        if not values or list(index) == list(range(values[0].shape()[axis])):
            return values
        indices = np.asarray(index, dtype=np.int64)
        return self._run(f"gather{axis}", values, {"index": indices})

    def pad_left(self, values: list[Value], width: int) -> list[Value]:
        """Prepend ``width`` zero positions (axis 2) to every value."""
        if not values or width == 0:
            return values
        pads = np.array([0, 0, width, 0, 0, 0, 0, 0], dtype=np.int64)
        return self._run("pad", values, {"pads": pads})

    def concat(self, first: list[Value], second: list[Value]) -> list[Value]:
        """Rows of ``second`` after rows of ``first``, pairwise."""
        if len(first) != len(second):
            raise ValueError(f"{len(first)} values against {len(second)}")
        if not first:
            return first
        return self._run("concat", [*first, *second], {})

    def rows(self, values: list[Value]) -> Value:
        """One value: the rows of ``values`` (of one type and rank) one after another."""
        if len(values) == 1:
            return values[0]
        return self._run("rows", values, {})[0]

    def _run(self, op: str, values: list[Value], extra: dict[str, np.ndarray]) -> list[Value]:
        types = tuple(_element_type(v) for v in values)
        rank = len(values[0].shape())
        key = (op, len(values), types, rank)
        graph = self.sessions.get(key)
        if graph is None:
            graph = self.sessions[key] = self._session(op, types, rank)
        feeds: dict[str, Feed] = {f"x{i}": v for i, v in enumerate(values)}
        feeds |= extra
        self.calls += 1
        found = bound_run(graph, feeds, self.device)
        return [found[f"y{i}"] for i in range(len(found))]

    def _session(self, op: str, types: tuple[int, ...], rank: int) -> Any:
        import onnx
        from onnx import TensorProto, helper

        count = len(types)
        free = [None] * rank  # every size free
        inputs = [helper.make_tensor_value_info(f"x{i}", t, free) for i, t in enumerate(types)]
        nodes = []
        if op == "rows":
            outputs = [helper.make_tensor_value_info("y0", types[0], free)]
            nodes = [helper.make_node("Concat", [f"x{i}" for i in range(count)], ["y0"], axis=0)]
        elif op == "concat":
            half = count // 2
            outputs = [helper.make_tensor_value_info(f"y{i}", types[i], free) for i in range(half)]
            nodes = [
                helper.make_node("Concat", [f"x{i}", f"x{half + i}"], [f"y{i}"], axis=0)
                for i in range(half)
            ]
        else:
            outputs = [helper.make_tensor_value_info(f"y{i}", t, free) for i, t in enumerate(types)]
            if op == "pad":
                inputs.append(helper.make_tensor_value_info("pads", TensorProto.INT64, [8]))
                nodes = [
                    helper.make_node("Pad", [f"x{i}", "pads"], [f"y{i}"]) for i in range(count)
                ]
            else:  # gather<axis>
                inputs.append(helper.make_tensor_value_info("index", TensorProto.INT64, [None]))
                axis = int(op.removeprefix("gather"))
                nodes = [
                    helper.make_node("Gather", [f"x{i}", "index"], [f"y{i}"], axis=axis)
                    for i in range(count)
                ]
        graph = helper.make_graph(nodes, op, inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        on_gpu = self.device.kind == "cuda"
        # One thread: these are copies, and a pool's threads would spin on the cores that
        # the graphs next to them need.
        return session(
            model.SerializeToString(), on_gpu=on_gpu, device_id=self.device.id, threads=1
        )
