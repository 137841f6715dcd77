"""Errors raised by server-side pre-processing, turned into INVALID_ARGUMENT responses."""

from __future__ import annotations


class InputItemError(ValueError):
    """One item of a request is invalid; the message starts with ``item <i>:``."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"item {index}: {reason}")
