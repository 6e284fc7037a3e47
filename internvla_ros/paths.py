"""Where the package's data lives, in a source checkout and in a colcon install."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "internvla_ros"
SOURCE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_ENV = "INTERNVLA_DEFAULT_MODEL"


def share_dir() -> Path:
    """The directory holding config/, launch/ and models/: the checkout, or the installed share/."""
    if (SOURCE_ROOT / "package.xml").is_file():
        return SOURCE_ROOT
    try:
        from ament_index_python.packages import get_package_share_directory
    except ImportError:
        return SOURCE_ROOT
    return Path(get_package_share_directory(PACKAGE))


def default_model_dir() -> Path:
    """The model used when none is named: $INTERNVLA_DEFAULT_MODEL, else models/default."""
    return Path(os.environ.get(DEFAULT_MODEL_ENV) or share_dir() / "models" / "default")


def config_path(name: str) -> Path:
    """A robot config by file name (looked up in config/) or by path."""
    path = Path(name)
    return path if path.is_absolute() or path.exists() else share_dir() / "config" / name
