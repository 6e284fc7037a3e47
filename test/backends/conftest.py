"""One export per test run, shared by every backend test (exporting takes tens of seconds)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from internvla_ros.backends.export import ensure_export

CASE_A = Path(__file__).resolve().parents[1] / "fixtures" / "internvla_a1_reference" / "case_a"
MODEL_ENV = "INTERNVLA_TEST_MODEL"
"""Point the backend tests at another checkpoint directory (e.g. models/default)."""
THREADS = 1


@pytest.fixture(scope="session")
def model_dir() -> Path:
    return Path(os.environ.get(MODEL_ENV) or CASE_A)


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Path:
    """An export cache holding the export of ``model_dir``."""
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("exports")
    ensure_export(model_dir, cache_root=root)
    return root


@pytest.fixture(scope="session")
def engine_dir(export_cache: Path, model_dir: Path) -> Path:
    return ensure_export(model_dir, cache_root=export_cache)  # the cached export (other tests add their own)


def copy_dir(source: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            shutil.copy(path, target / path.name)
    return target
