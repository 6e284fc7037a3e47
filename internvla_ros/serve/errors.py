"""Errors of the inference server and its client."""

from __future__ import annotations

from internvla_ros.runtime.errors import PolicyRuntimeError


class ServeError(PolicyRuntimeError):
    """The server cannot be set up as asked (a bad model directory, a missing token)."""


class RequestRejected(ValueError):
    """A request the server refuses: ``status`` is the HTTP status (4xx) and the message the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
