"""Errors of server-side input handling: each becomes an INVALID_ARGUMENT response.

Anything else a model raises is unexpected: it becomes INTERNAL with a short message and the
request id, and its traceback goes to the server log only.
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """A request is invalid; the message, meant for the caller, names the input."""


class InputItemError(InvalidRequest):
    """One item of a request input is invalid; the message starts with ``item <i>:``."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"item {index}: {reason}")


def named(name: str, exc: InvalidRequest) -> InvalidRequest:
    """The same problem with the input's name in front: ``IMAGE item 3: ...``."""
    return InvalidRequest(f"{name} {exc}")
