"""Every backend that runs here against the torch pipeline, on every output, on inputs the fixture lacks.

The reference fixture has all cameras, a square resize target and one prompt; here the inputs come
from the real preprocessing: a missing camera, a non-square resize target (224x288: a 16x20 ViT grid,
294 prefix tokens), a short prompt and a long one. Compared: actions, foresight latents of every view
(a missing camera's too) and the decoded foresight images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from internvla_ros.backends.export import ensure_export
from internvla_ros.backends.factory import BackendOptions, create_backend
from internvla_ros.model.config import load_config
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.pipeline import InferencePipeline, select, stack_inputs
from internvla_ros.model.preprocessing import ObservationPreprocessor, PreprocessorConfig, load_tokenizer

from .conftest import CASE_A, THREADS

ATOL = {
    "torch-uncached": {"actions": 1e-5, "foresight_latents": 1e-5, "foresight_images": 1e-4},
    "onnxruntime": {"actions": 1e-4, "foresight_latents": 5e-4, "foresight_images": 2e-3},
}
"""Measured on these cases: uncached actions <= 1e-6, latents 2e-6, images 3e-5; ONNX Runtime actions
<= 1.6e-5, latents <= 1.8e-4, images (values span about +-15) <= 9.6e-4."""
BATCH_ATOL = 1e-5
SHORT_PROMPT = "go"
LONG_PROMPT = ("pick up the red block on the left of the table and put it into the blue bowl next to the green "
               "cup, then move the arm back to its start")


@dataclass(frozen=True)
class Case:
    model: str
    cameras: tuple[int, ...]
    prompt: str


CASES = {
    "missing_camera_short_prompt": Case("square", (0, 2), SHORT_PROMPT),
    "all_cameras_long_prompt": Case("square", (0, 1, 2), LONG_PROMPT),
    "non_square_missing_camera": Case("non_square", (0, 2), SHORT_PROMPT),
    "non_square_long_prompt_one_camera": Case("non_square", (1,), LONG_PROMPT),
}


@pytest.fixture(scope="module")
def models(non_square_dir: Path, export_cache: Path) -> dict[str, dict[str, InferencePipeline]]:
    torch.set_num_threads(THREADS)
    directories = {"square": CASE_A, "non_square": non_square_dir}
    pipelines = {}
    for key, directory in directories.items():
        ensure_export(directory, cache_root=export_cache)
        options = BackendOptions(directory, cache_root=export_cache, threads=THREADS)
        pipelines[key] = {name: create_backend([name], options).backend
                          for name in ("torch", "torch-uncached", "onnxruntime")}
    assert load_config(directories["non_square"]).vision_grid == (1, 16, 20)
    return pipelines


def case_inputs(pipeline: InferencePipeline, case: Case, seed: int) -> tuple[ModelInputs, torch.Tensor]:
    rng = np.random.default_rng(seed)
    preprocessor = ObservationPreprocessor(PreprocessorConfig.from_model_config(pipeline.config),
                                           load_tokenizer(None), stats=None)
    sizes = [(240, 320), (480, 360), (200, 200)]
    current = {slot: rng.integers(0, 256, (*sizes[slot], 3), dtype=np.uint8) for slot in case.cameras}
    history = {slot: rng.integers(0, 256, (*sizes[slot], 3), dtype=np.uint8) for slot in case.cameras}
    inputs = preprocessor(current, rng.normal(size=14).astype(np.float32), case.prompt, history)
    noise = torch.from_numpy(rng.normal(size=(1, pipeline.config.chunk_size, pipeline.config.max_action_dim))).float()
    return inputs, noise


@pytest.mark.slow
@pytest.mark.parametrize("backend", sorted(ATOL))
@pytest.mark.parametrize("case_name", sorted(CASES))
def test_every_output_matches_torch(models: dict[str, dict[str, InferencePipeline]], case_name: str,
                                    backend: str) -> None:
    case = CASES[case_name]
    reference_pipeline, pipeline = models[case.model]["torch"], models[case.model][backend]
    inputs, noise = case_inputs(reference_pipeline, case, seed=len(case_name))
    assert inputs.view_mask[0].tolist() == [slot in case.cameras for slot in range(3)]
    expected = reference_pipeline.run(inputs, noise, decode=True)
    got = pipeline.run(inputs, noise, decode=True)
    tolerance = ATOL[backend]
    for name in ("actions", "foresight_latents", "foresight_images"):
        ours, theirs = getattr(got, name), getattr(expected, name)
        assert ours is not None and theirs is not None and ours.shape == theirs.shape, name
        diff = (ours.cpu() - theirs.cpu()).abs()
        per_view = [] if name == "actions" else diff.flatten(2).amax(dim=(0, 2)).tolist()
        assert diff.max().item() <= tolerance[name], f"{name}: {diff.max().item():.3e} per view {per_view}"


@pytest.mark.slow
def test_a_batch_of_mixed_inputs_equals_each_input(models: dict[str, dict[str, InferencePipeline]]) -> None:
    """Different prompt lengths and missing cameras in one batch (masks only; shapes are the same)."""
    for key in ("square", "non_square"):
        names = [name for name, case in CASES.items() if case.model == key]
        pairs = [case_inputs(models[key]["torch"], CASES[name], seed=index) for index, name in enumerate(names)]
        inputs, noise = stack_inputs([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
        for backend in ("torch", "onnxruntime"):
            pipeline = models[key][backend]
            batched = pipeline.run(inputs, noise, foresight=True)
            for index in range(len(pairs)):
                alone = pipeline.run(select(inputs, index), noise[index:index + 1], foresight=True)
                assert (batched.actions[index] - alone.actions[0]).abs().max().item() <= BATCH_ATOL
                assert batched.foresight_latents is not None and alone.foresight_latents is not None
                assert (batched.foresight_latents[index] - alone.foresight_latents[0]).abs().max().item() <= BATCH_ATOL
