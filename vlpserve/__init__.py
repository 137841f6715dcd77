"""vlpserve: serve vision-language models (CLIP, GroupViT, BLIP) behind NVIDIA Triton.

This package is only the glue: version, the error tree, the serving contract and the CLI.
The work lives in ``vlpserve.export``, ``vlpserve.model_repository``, ``vlpserve.client``
and ``vlpserve.benchmarks``.
"""

from vlpserve.errors import (
    AuthenticationError,
    ClientError,
    ConfigError,
    ConnectionSecurityError,
    DeadlineExceeded,
    ExportError,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    ParityError,
    RepositoryError,
    ServeError,
    ServerUnavailable,
    VlpserveError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConfigError",
    "ConnectionSecurityError",
    "DeadlineExceeded",
    "ExportError",
    "InvalidInput",
    "ModelNotReady",
    "Overloaded",
    "ParityError",
    "RepositoryError",
    "ServeError",
    "ServerUnavailable",
    "VlpserveError",
    "__version__",
]
