"""Resize, center crop and normalisation on a session's device: ``--preprocess device``.

Images are still decoded on CPU threads (PIL, with every limit and error of
``ImagePreprocessing.decode``); then one small ONNX graph per image, run by ONNX Runtime on
the device of the model's instance, does what the Hugging Face processor does next: resize
(ONNX ``Resize``: cubic with PIL's coefficient -0.5, the filter stretched when shrinking as
PIL's antialiasing does, edge weights renormalised), round and clip to 0..255 (PIL's 8-bit
result), pad and crop to the center, rescale and normalise in float32. Each image is written
straight into its row of the request's batch, a value on the device.

Not bit-equal to the host path, so it is parity-gated: PIL rounds between its horizontal and
vertical passes, and the graph does not. Measured on the real photos (the gate of
tests/model_repository/test_device_images.py): at most a few 8-bit levels apart and under
0.2 of a level on average, embeddings cosine >= 0.9999 against the processor's pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlpserve.model_repository.runtime.device import Device
from vlpserve.model_repository.runtime.images import ImagePreprocessing
from vlpserve.ort import session

_OPSET = 18  # Resize's antialias attribute
_PIL_BICUBIC = 3


@dataclass(frozen=True)
class _Geometry:
    """Where one image goes: its resized size and the crop's padding and window."""

    sizes: np.ndarray  # (1, 3, height, width) after resizing
    pads: np.ndarray  # Pad's 8 values (NCHW begins, then ends)
    starts: np.ndarray  # Slice's (top, left) on the padded image
    ends: np.ndarray


class DeviceImages:
    """An ``ImagePreprocessing``'s resize, crop and normalisation as an ONNX Runtime graph
    on ``device``; its decoding stays on the host."""

    def __init__(
        self,
        steps: ImagePreprocessing,
        *,
        on_gpu: bool = False,
        device_id: int = 0,
        threads: int = 1,
    ) -> None:
        """On GPU ``device_id`` where ONNX Runtime has CUDA, else on CPU with ``threads``
        threads per call (the callers run images on threads of their own)."""
        if steps.resample != _PIL_BICUBIC:
            raise ValueError(
                f"device pre-processing resizes bicubic only; this processor resamples with "
                f"PIL filter {steps.resample}"
            )
        self.steps = steps
        self.height, self.width = steps.output_size  # ValueError: no fixed output size
        self.session = session(
            _graph(steps).SerializeToString(), on_gpu=on_gpu, device_id=device_id, threads=threads
        )
        self.device = Device.of(self.session)
        self.row_bytes = 3 * self.height * self.width * 4

    def batch(self, rows: int) -> Any:
        """An uninitialised (rows, 3, height, width) float32 value on the device."""
        import onnxruntime as ort

        shape = [rows, 3, self.height, self.width]
        return ort.OrtValue.ortvalue_from_shape_and_type(
            shape, np.float32, self.device.kind, self.device.id
        )

    def into(self, image: Image.Image, batch: Any, row: int) -> None:
        """Pre-process a decoded RGB ``image`` into row ``row`` of ``batch`` (from
        ``batch``): the graph writes its output there, on the device, with no copy."""
        if not 0 <= row < batch.shape()[0]:
            raise IndexError(f"row {row} of a batch of {batch.shape()[0]}")
        geometry = self._geometry(image)
        binding = self.session.io_binding()
        binding.bind_cpu_input("image", np.asarray(image))
        binding.bind_cpu_input("sizes", geometry.sizes)
        binding.bind_cpu_input("pads", geometry.pads)
        binding.bind_cpu_input("starts", geometry.starts)
        binding.bind_cpu_input("ends", geometry.ends)
        binding.bind_output(
            "pixel_values",
            self.device.kind,
            self.device.id,
            np.float32,
            [1, 3, self.height, self.width],
            batch.data_ptr() + row * self.row_bytes,
        )
        self.session.run_with_iobinding(binding)

    def stack(self, images: list[Image.Image]) -> Any:
        """A (len(images), 3, height, width) value on the device, one decoded RGB image per
        row, pre-processed one after another on this thread."""
        value = self.batch(len(images))
        for row, image in enumerate(images):
            self.into(image, value, row)
        return value

    def __call__(self, image: Image.Image) -> Any:
        """A (1, 3, height, width) value on the device of one decoded RGB image."""
        return self.stack([image])

    def _geometry(self, image: Image.Image) -> _Geometry:
        steps = self.steps
        width, height = image.size
        if steps.resize_to or steps.resize_shortest_edge:
            width, height = steps.resize_size(image)
        crop_h, crop_w = steps.crop or (height, width)
        # transformers' center_crop: zero padding where the image is smaller than the crop
        new_h, new_w = max(crop_h, height), max(crop_w, width)
        pad_top, pad_left = (new_h - height) // 2, (new_w - width) // 2
        pads = [0, 0, pad_top, pad_left, 0, 0, new_h - height - pad_top, new_w - width - pad_left]
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        return _Geometry(
            sizes=np.array([1, 3, height, width], dtype=np.int64),
            pads=np.array(pads, dtype=np.int64),
            starts=np.array([top, left], dtype=np.int64),
            ends=np.array([top + crop_h, left + crop_w], dtype=np.int64),
        )


def _graph(steps: ImagePreprocessing) -> Any:
    """image uint8 (H, W, 3) -> pixel_values float32 (1, 3, h, w)."""
    import onnx
    from onnx import TensorProto, helper

    def const(name: str, values: list[float] | list[int], kind: int, dims: list[int]) -> Any:
        return helper.make_tensor(name, kind, dims, values)

    inputs = [
        helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", 3]),
        helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
        helper.make_tensor_value_info("starts", TensorProto.INT64, [2]),
        helper.make_tensor_value_info("ends", TensorProto.INT64, [2]),
    ]
    height, width = steps.output_size
    output = helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, height, width])
    initializers = [
        const("axis0", [0], TensorProto.INT64, [1]),
        const("axes", [2, 3], TensorProto.INT64, [2]),
        const("low", [0.0], TensorProto.FLOAT, []),
        const("high", [255.0], TensorProto.FLOAT, []),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["image", "axis0"], ["nhwc"]),
        helper.make_node("Transpose", ["nhwc"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw"], ["levels"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            ["levels", "", "", "sizes"],
            ["resized"],
            mode="cubic",
            cubic_coeff_a=-0.5,
            antialias=1,
            exclude_outside=1,
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node("Round", ["resized"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "low", "high"], ["clipped"]),
        helper.make_node("Pad", ["clipped", "pads"], ["padded"]),
        helper.make_node("Slice", ["padded", "starts", "ends", "axes"], ["cropped"]),
    ]
    last = "cropped"
    if steps.rescale_factor is not None:
        initializers.append(const("scale", [steps.rescale_factor], TensorProto.FLOAT, []))
        nodes.append(helper.make_node("Mul", [last, "scale"], ["scaled"]))
        last = "scaled"
    if steps.mean is not None and steps.std is not None:
        initializers.append(const("mean", list(steps.mean), TensorProto.FLOAT, [1, 3, 1, 1]))
        initializers.append(const("std", list(steps.std), TensorProto.FLOAT, [1, 3, 1, 1]))
        nodes.append(helper.make_node("Sub", [last, "mean"], ["centred"]))
        nodes.append(helper.make_node("Div", ["centred", "std"], ["normalised"]))
        last = "normalised"
    nodes.append(helper.make_node("Identity", [last], ["pixel_values"]))
    graph = helper.make_graph(nodes, "preprocess", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model
