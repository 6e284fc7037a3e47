"""One export per model and test run, shared by every backend test (exporting takes about a minute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


NON_SQUARE = (224, 288)


def non_square_model(target: Path) -> Path:
    """case_a with a 224x288 resize target (config.json and arch.json agree on it)."""
    copy_dir(CASE_A, target)
    for name in ("inputs.safetensors", "outputs.safetensors"):
        (target / name).unlink()
    config = json.loads((target / "config.json").read_text())
    config["image_resolution"] = list(NON_SQUARE)
    (target / "config.json").write_text(json.dumps(config))
    arch = json.loads((target / "arch.json").read_text())
    arch["policy"]["image_resolution"] = list(NON_SQUARE)
    arch["processor"]["resize_with_pad"].update(height=NON_SQUARE[0], width=NON_SQUARE[1])
    (target / "arch.json").write_text(json.dumps(arch))
    return target


@pytest.fixture(scope="session")
def non_square_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return non_square_model(tmp_path_factory.mktemp("non_square"))


@pytest.fixture(scope="session")
def export_cache(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, non_square_dir: Path) -> Path:
    """An export cache holding the exports of ``model_dir`` and of the non-square model, made side by side
    (an export is single-threaded Python for most of its minute)."""
    torch.set_num_threads(THREADS)
    root = tmp_path_factory.mktemp("exports")
    other = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from internvla_ros.backends.export import "
         "ensure_export; ensure_export(Path(sys.argv[1]), cache_root=Path(sys.argv[2]))",
         str(non_square_dir), str(root)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "OMP_NUM_THREADS": str(THREADS)})
    ensure_export(model_dir, cache_root=root)
    output, _ = other.communicate(timeout=600)
    assert other.returncode == 0, output[-3000:]
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
