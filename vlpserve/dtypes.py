"""The one table of element types: numpy <-> ONNX <-> Triton (config enum and wire name).

ONNX's TensorProto codes are written as numbers so that the client can use this table
without importing onnx.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlpserve.errors import ConfigError


@dataclass(frozen=True)
class DType:
    """One element type as every layer names it."""

    numpy: str  # numpy dtype name; "object" for BYTES
    onnx: int  # onnx.TensorProto.DataType code
    config: str  # model_config_pb2.DataType name, as in config.pbtxt
    wire: str  # tritonclient / inference protocol name


DTYPES: tuple[DType, ...] = (
    DType("float32", 1, "TYPE_FP32", "FP32"),
    DType("uint8", 2, "TYPE_UINT8", "UINT8"),
    DType("int8", 3, "TYPE_INT8", "INT8"),
    DType("uint16", 4, "TYPE_UINT16", "UINT16"),
    DType("int32", 6, "TYPE_INT32", "INT32"),
    DType("int64", 7, "TYPE_INT64", "INT64"),
    DType("object", 8, "TYPE_STRING", "BYTES"),
    DType("bool", 9, "TYPE_BOOL", "BOOL"),
    DType("float16", 10, "TYPE_FP16", "FP16"),
    DType("float64", 11, "TYPE_FP64", "FP64"),
)


def _lookup(field: str, value: object) -> DType:
    for dtype in DTYPES:
        if getattr(dtype, field) == value:
            return dtype
    raise ConfigError(f"unsupported element type {value!r} (as {field})")


def from_numpy(dtype: np.dtype | str | type) -> DType:
    """Row for a numpy dtype (bytes and str arrays map to BYTES)."""
    np_dtype = np.dtype(dtype)
    if np_dtype.kind in ("O", "S", "U"):
        return _lookup("numpy", "object")
    return _lookup("numpy", np_dtype.name)


def from_onnx(code: int) -> DType:
    """Row for an ONNX TensorProto data type code."""
    return _lookup("onnx", code)


def from_config(name: str) -> DType:
    """Row for a Triton config enum name such as ``TYPE_FP32``."""
    return _lookup("config", name)


def from_wire(name: str) -> DType:
    """Row for a Triton protocol type name such as ``FP32``."""
    return _lookup("wire", name)
