"""Model directories for node tests that run an analytic policy instead of the neural model.

The policies themselves live in internvla_ros.runtime.test_policies, so that the node and the inference
worker reach them by their registered names (``policy_factory:=test_sine``), never by a module path.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_unit_stats(directory: Path, robot_type: str, dims: int) -> Path:
    """A model dir holding only stats.json with mean 0 / std 1 for one robot type."""
    directory.mkdir(parents=True, exist_ok=True)
    entry = {"mean": [0.0] * dims, "std": [1.0] * dims, "min": [-10.0] * dims, "max": [10.0] * dims}
    (directory / "stats.json").write_text(json.dumps({robot_type: {"observation.state": entry, "action": entry}}))
    return directory
