"""Errors raised by the backends package; every message names the fix."""


class BackendError(Exception):
    """Base class for every error the backends package raises."""


class BackendUnavailable(BackendError):
    """A backend whose library, provider or device is missing here (the only error a fallback skips)."""


class ExportMismatchError(BackendError):
    """An export that does not belong to the model it is loaded for (stale, or from another model)."""
