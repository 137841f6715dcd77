"""The vlpserve gRPC client: ``from vlpserve.client import Client``.

Importing it loads numpy and tritonclient only (no torch, transformers or onnx).
"""

from vlpserve.client.client import Client
from vlpserve.client.segmentation import Segmentation
from vlpserve.errors import (
    ClientError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    ServerUnavailable,
)

__all__ = [
    "Client",
    "ClientError",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotReady",
    "Segmentation",
    "ServerUnavailable",
]
