"""Errors raised by the runtime package: one class per concern, each message names the fix."""


class PolicyRuntimeError(Exception):
    """Base class for every error the runtime package raises on bad input."""


class RuntimeConfigError(PolicyRuntimeError):
    """A configuration value that is missing, of the wrong type or out of range (names its dotted key)."""


class MappingError(PolicyRuntimeError):
    """Joint states or a policy output that cannot be mapped between the robot and the model.

    ``reason`` is a short fixed code (``shape``, ``non_finite``, ...) for counters; the message explains.
    """

    def __init__(self, message: str, reason: str = "mapping") -> None:
        super().__init__(message)
        self.reason = reason
