"""Errors raised by the model package: one class per concern, each message names the fix."""


class ModelError(Exception):
    """Base class for every error the model package raises on bad input."""


class CheckpointError(ModelError):
    """A checkpoint directory, file or tensor that cannot be loaded as asked."""


class ConfigError(ModelError):
    """A model configuration value that is unknown, missing or inconsistent."""


class PreprocessingError(ModelError):
    """An observation (image, state, prompt) that the model cannot consume."""
