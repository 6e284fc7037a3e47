"""Shared bags and a model cache for the replay tests (the model loads once per test run)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from internvla_ros.cli import replay as replay_cli
from internvla_ros.paths import default_model_dir
from internvla_ros.replay import pipeline
from internvla_ros.runtime.config import RuntimeConfig
from test.replay.bagfactory import BagSpec, write_sim_bag

INSTRUCTION = "sort the parcels"

_POLICIES: dict[tuple, object] = {}


@pytest.fixture(autouse=True)
def cached_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads each model and its settings once (the production cache key); every replay resets the policy
    first, so reuse changes nothing."""
    load = pipeline.load_model

    def cached(request: pipeline.ReplayRequest, config: RuntimeConfig) -> object:
        key = pipeline.load_key(request, config)
        if key not in _POLICIES:
            _POLICIES[key] = load(request, config)
        return _POLICIES[key]

    monkeypatch.setattr(pipeline, "load_model", cached)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    path = default_model_dir()
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no default model at {path}: run `internvla model make-default --out {path}`")
    return path


@pytest.fixture(scope="session")
def sim_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s of the conveyor cell, mcap, wrist camera as CompressedImage."""
    return write_sim_bag(tmp_path_factory.mktemp("bags") / "sim_mcap", spec=BagSpec(compressed_camera="wrist"))


Replay = Callable[..., int]


@pytest.fixture
def replay(model_dir: Path) -> Replay:
    """Runs ``internvla replay`` through its parser; returns the exit code."""

    def run(bag: Path, *extra: str, model: Path | None = None, config: str = "conveyor_sorting.yaml",
            instruction: str | None = INSTRUCTION) -> int:
        """``instruction=None`` passes no --instruction (the bag's instruction topic is used)."""
        parser = argparse.ArgumentParser()
        replay_cli.register(parser.add_subparsers())
        given = ["--instruction", instruction] if instruction is not None else []
        args = parser.parse_args(["replay", str(bag), "--config", config, "--model", str(model or model_dir),
                                  *given, "--no-progress", *extra])
        return int(args.func(args))

    return run
