"""The one error class of the replay package: unusable input or configuration (exit code 2)."""


class ReplayError(Exception):
    """A bag, config, model, tolerance file or output path the replay cannot use; the message names it."""
