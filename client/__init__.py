"""The vlpserve gRPC client: ``from vlpserve.client import Client`` (or ``AsyncClient``).

Importing it loads numpy, grpcio and tritonclient's protocol messages only (no torch,
transformers or onnx).
"""

from vlpserve.client.aio import AsyncClient
from vlpserve.client.client import Client
from vlpserve.client.segmentation import Segmentation
from vlpserve.errors import (
    AuthenticationError,
    ClientError,
    ConnectionSecurityError,
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    ServerUnavailable,
)

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ClientError",
    "ConnectionSecurityError",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelNotReady",
    "Overloaded",
    "Segmentation",
    "ServerUnavailable",
]
