"""numpy arrays <-> the inference protocol's gRPC messages, and gRPC failures -> typed errors.

Both clients speak Triton's gRPC protocol (KServe v2 with Triton's extensions) directly over
grpcio, with the message classes tritonclient ships: one channel per server, every call a
plain unary or streaming RPC. Nothing here touches the network.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import service_pb2 as pb

from vlpserve.dtypes import from_numpy, from_wire
from vlpserve.errors import (
    AuthenticationError,
    ClientError,
    ConfigError,
    ConnectionSecurityError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    ServerUnavailable,
)

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    # No size limit on this side: a label map of a large photo is tens of MB. The server
    # keeps its own (README, Serving contract).
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    # A server that comes back (restarted, rescheduled) is found again within a second,
    # not after gRPC's default backoff of up to two minutes.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# Triton's refusals, recognised by their text (the status code alone is UNAVAILABLE).
RESTRICTED = "This protocol is restricted"
QUEUE_FULL = "Exceeds maximum queue size"
TIMED_OUT_IN_QUEUE = "Request timeout expired"
UNLOADED = "has no available versions"
# Triton shutting down; inside a stream it comes as a message without a status code.
STOPPING = "stopped accepting new inference requests"

_ITEM = re.compile(r"\bitem (\d+)")


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Sequence[str] | None = None,
    request_id: str = "",
    parameters: Mapping[str, bool | int] | None = None,
) -> pb.ModelInferRequest:
    """A ModelInferRequest carrying ``inputs`` as raw contents (BYTES length-prefixed)."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise TypeError("inputs must be a non-empty mapping of tensor name to numpy array")
    if isinstance(outputs, str):
        raise TypeError("outputs must be a list of names, not a bare str: wrap it: [name]")
    request = pb.ModelInferRequest(model_name=model, id=request_id)
    for name, value in inputs.items():
        array = np.asarray(value)
        try:
            wire = from_numpy(array.dtype).wire
        except ConfigError as exc:
            raise InvalidInput(f"{name}: unsupported dtype {array.dtype}") from exc
        request.inputs.add(name=name, datatype=wire, shape=list(array.shape))
        if wire == "BYTES":
            request.raw_input_contents.append(serialize_bytes(array))
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    for output in outputs or ():
        request.outputs.add(name=output)
    for key, flag in (parameters or {}).items():
        if isinstance(flag, bool):
            request.parameters[key].bool_param = flag
        else:
            request.parameters[key].int64_param = flag
    return request


def serialize_bytes(array: np.ndarray) -> bytes:
    """BYTES elements in row-major order, each after its little-endian 4-byte length."""
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = bytes(item) if isinstance(item, bytes | bytearray) else str(item).encode()
        parts += (struct.pack("<I", len(data)), data)
    return b"".join(parts)


def deserialize_bytes(raw: bytes) -> np.ndarray:
    """The BYTES elements of a raw output, as a flat object array."""
    items = []
    offset = 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        items.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return np.array(items, dtype=object)


def bytes_rows(items: Sequence[bytes]) -> np.ndarray:
    """BYTES items as an (items, 1) object array: one item per row of a batch."""
    return np.array(list(items), dtype=object).reshape(-1, 1)


def response_arrays(
    response: pb.ModelInferResponse, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """The outputs of a response (all, or ``names``) as numpy arrays."""
    found: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        shape = [int(d) for d in tensor.shape]
        if tensor.datatype == "BYTES":
            array = deserialize_bytes(raw)
        else:
            array = np.frombuffer(raw, dtype=np.dtype(from_wire(tensor.datatype).numpy))
        found[tensor.name] = array.reshape(shape)
    if names is None:
        return found
    missing = [name for name in names if name not in found]
    if missing:
        raise ClientError(f"{response.model_name}: the response lacks {missing}")
    return {name: found[name] for name in names}


def config_dict(response: pb.ModelConfigResponse) -> dict[str, Any]:
    """A model's configuration as Triton's JSON form (as ``tritonclient``'s ``as_json``)."""
    return dict(json_format.MessageToDict(response.config, preserving_proto_field_name=True))


def translate(
    code: Any, message: str, what: str, offset: int = 0, *, tls: bool = False
) -> ClientError:
    """The typed error for a failed call; item numbers shifted by ``offset`` (a chunk's
    first item) so that they are the caller's. ``tls``: whether the channel is secure."""
    if offset:
        message = _ITEM.sub(lambda m: f"item {int(m.group(1)) + offset}", message)
    text = f"{what}: {message}"
    if RESTRICTED in message:
        return AuthenticationError(
            f"{what}: the server requires an API key (api_key=...) and refused this call's"
        )
    if "andshake failed" in message:
        return ConnectionSecurityError(
            f"{what}: the TLS handshake failed ({message.rsplit(': ', 1)[-1]}): "
            "does the server speak TLS, and does tls_ca hold its issuer?"
        )
    if "failed to connect" in message and "Socket closed" in message:
        need = "a client certificate (tls_cert, tls_key)" if tls else "TLS (tls_ca=...)"
        return ConnectionSecurityError(
            f"{what}: the server closed the connection while it was being set up: "
            f"it probably requires {need}"
        )
    if QUEUE_FULL in message:
        return Overloaded(f"{what}: the server is overloaded ({message})")
    if TIMED_OUT_IN_QUEUE in message:
        return DeadlineExceeded(text)
    if UNLOADED in message or STOPPING in message:  # stopping (or reloading): go elsewhere
        return ServerUnavailable(text)
    if "unknown model" in message or "is not ready" in message or code == grpc.StatusCode.NOT_FOUND:
        return ModelNotReady(text)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidInput(text)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(text)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailable(text)
    return ClientError(text)


def rpc_error(exc: grpc.RpcError, what: str, offset: int = 0, *, tls: bool = False) -> ClientError:
    """The typed error for a grpc failure (a ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else None
    return translate(code, str(details or exc), what, offset, tls=tls)
