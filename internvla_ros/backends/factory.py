"""Backends by name, with an explicit, reported fallback.

Only :class:`BackendUnavailable` (a missing library, provider or device) lets the next named
backend be tried, and only with ``fallback=True``; every skipped backend is returned with its
reason and logged. Any other error (a stale export, a broken graph) is raised: running something
other than what was asked for must be the caller's decision.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from internvla_ros.backends import onnxruntime_backend, tensorrt_backend, torch_backend
from internvla_ros.backends.errors import BackendError, BackendUnavailable
from internvla_ros.backends.export import DTYPES, ensure_export
from internvla_ros.model.pipeline import InferencePipeline

LOG = logging.getLogger(__name__)
BACKEND_NAMES = (torch_backend.NAME, torch_backend.NAME_UNCACHED, onnxruntime_backend.NAME, tensorrt_backend.NAME)


@dataclass(frozen=True)
class BackendOptions:
    """What every backend may need. ``engine_dir=None``: an export cached under ``cache_root`` (made if absent)."""

    model_dir: Path
    engine_dir: Path | None = None
    cache_root: Path | None = None
    dtype: str = "float32"
    threads: int = 1
    batch_workers: int = 1  # observations of a batch at once, where stages run one at a time (ONNX Runtime, CPU)
    fallback: bool = False
    compile: bool = False


@dataclass(frozen=True)
class BackendChoice:
    backend: InferencePipeline
    skipped: tuple[tuple[str, str], ...]
    """(name, reason) of every backend tried before it."""


def _engine_dir(options: BackendOptions) -> Path:
    return options.engine_dir or ensure_export(options.model_dir, options.dtype, options.cache_root)


def create_one(name: str, options: BackendOptions) -> InferencePipeline:
    """The pipeline over backend ``name``'s stages (the same for every backend; only the stages differ)."""
    if options.dtype not in DTYPES:
        raise BackendError(f"unknown dtype {options.dtype!r}; choose one of {', '.join(DTYPES)}")
    if name in (torch_backend.NAME, torch_backend.NAME_UNCACHED):
        return torch_backend.create(name, options.model_dir, options.dtype, options.threads, options.compile)
    if name == onnxruntime_backend.NAME:
        onnxruntime_backend.available_providers()  # before an export is made for it
        return onnxruntime_backend.create(options.model_dir, _engine_dir(options), options.threads,
                                          options.batch_workers)
    if name == tensorrt_backend.NAME:
        tensorrt_backend.import_tensorrt()
        return tensorrt_backend.create(options.model_dir, _engine_dir(options))
    raise BackendError(f"unknown backend {name!r}; choose from {', '.join(BACKEND_NAMES)}")


def create_backend(names: Sequence[str], options: BackendOptions) -> BackendChoice:
    """The first of ``names`` that can run here (the first only, unless ``options.fallback``)."""
    if not names:
        raise BackendError(f"no backend named; choose from {', '.join(BACKEND_NAMES)}")
    skipped: list[tuple[str, str]] = []
    for name, following in zip(names, [*names[1:], None], strict=True):
        try:
            return BackendChoice(create_one(name, options), tuple(skipped))
        except BackendUnavailable as err:
            skipped.append((name, str(err)))
            if not options.fallback or following is None:
                tried = "; ".join(why for _, why in skipped)
                hint = "" if options.fallback else " (fallback to the next backend is off)"
                raise BackendUnavailable(f"no requested backend can run here{hint}: {tried}") from err
            LOG.warning("backend %s unavailable (%s); falling back to %s", name, err, following)
    raise BackendError("no backend named")  # not reached: names is not empty
