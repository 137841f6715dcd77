"""Errors in OpenAI's JSON form, with the HTTP status each kind of failure takes."""

from __future__ import annotations

from typing import Any

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


class APIError(Exception):
    """A failure to answer with ``status`` and OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, kind="invalid_request_error", param=param)


def unsupported(field: str, why: str = "is not supported") -> APIError:
    return APIError(
        400, f"{field} {why}", kind="invalid_request_error", param=field, code="unsupported"
    )


def unknown_model(model: str, served: list[str]) -> APIError:
    return APIError(
        404,
        f"The model {model!r} does not exist here; served: {', '.join(served) or 'none'}",
        kind="invalid_request_error",
        param="model",
        code="model_not_found",
    )


def unauthorized() -> APIError:
    return APIError(
        401,
        "Incorrect or missing API key: send the header 'Authorization: Bearer <key>'",
        kind="invalid_request_error",
        code="invalid_api_key",
    )


def too_large(size: int, limit: int) -> APIError:
    return APIError(
        413,
        f"The request body is {size} bytes, over the limit of {limit}",
        kind="invalid_request_error",
    )


def too_slow(limit_s: float) -> APIError:
    return APIError(
        408,
        f"The request body did not arrive within {limit_s:g} s",
        kind="invalid_request_error",
        code="timeout",
    )


def from_client(exc: ClientError, param: str | None = None) -> APIError:
    """The HTTP answer to a failed gRPC call."""
    message = str(exc)
    if isinstance(exc, InvalidInput):
        return invalid(message, param)
    if isinstance(exc, Overloaded):
        return APIError(429, message, kind="rate_limit_error", code="overloaded")
    if isinstance(exc, (ServerUnavailable, ModelNotReady, ConnectionSecurityError)):
        return APIError(503, message, kind="server_error", code="unavailable")
    if isinstance(exc, DeadlineExceeded):
        return APIError(504, message, kind="server_error", code="timeout")
    if isinstance(exc, AuthenticationError):  # the front door's key is not Triton's
        return APIError(503, "the front door cannot reach the model server", kind="server_error")
    return APIError(500, message, kind="server_error")
