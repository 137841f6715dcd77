"""The error tree: one root, specific subclasses, each carrying what the user needs to act."""

from __future__ import annotations


class VlpserveError(Exception):
    """Root of every error vlpserve raises on purpose."""


class ConfigError(VlpserveError, ValueError):
    """An option or configuration value is invalid."""


class ExportError(VlpserveError):
    """A checkpoint could not be exported to ONNX."""


class ParityError(ExportError):
    """An exported graph disagrees with the PyTorch reference beyond tolerance."""

    def __init__(
        self,
        graph: str,
        check: str,
        *,
        cosine_min: float,
        max_abs_diff: float,
        cosine_tolerance: float,
    ) -> None:
        self.graph = graph
        self.check = check
        self.cosine_min = cosine_min
        self.max_abs_diff = max_abs_diff
        self.cosine_tolerance = cosine_tolerance
        super().__init__(
            f"{graph}: parity check '{check}' failed: min cosine {cosine_min:.6f} "
            f"< {cosine_tolerance} (max abs diff {max_abs_diff:.3e})"
        )


class RepositoryError(VlpserveError):
    """A Triton model repository is missing pieces or disagrees with the serving contract."""


class ServeError(VlpserveError):
    """The tritonserver process could not be started or stopped cleanly."""


class ClientError(VlpserveError):
    """A client call failed."""


class ServerUnavailable(ClientError):
    """The server cannot be reached (after the configured retries)."""


class Overloaded(ServerUnavailable):
    """The server's queue for the model is full: the request was refused at once. Retried
    with backoff while the call's deadline allows."""


class AuthenticationError(ClientError):
    """The server requires an API key and the call sent none, or a wrong one. Never retried."""


class ConnectionSecurityError(ClientError):
    """TLS on one side only, or a certificate the other side does not trust. Never retried."""


class ModelNotReady(ClientError):
    """The server is up but the model asked for is not loaded or not ready."""


class InvalidInput(ClientError, ValueError):
    """The request was rejected because an input is invalid; the message names the item."""


class DeadlineExceeded(ClientError, TimeoutError):
    """The call did not finish within its deadline."""
