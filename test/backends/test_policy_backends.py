"""The runtime's policy computes the same chunks on every backend, with and without K/V reuse, one by one
or as a batch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from internvla_ros.backends.errors import BackendError
from internvla_ros.runtime.internvla_policy import load_policy, warmup_observation

ACTIONS_ATOL = 1e-4
KV_REUSE_ATOL = 1e-5
"""Cached prefix/generation K/V vs all blocks recomputed at every step: same math, other summation order."""
BATCH_ATOL = 1e-5
CAMERAS = {"head": 0, "left_wrist": 1, "right_wrist": 2}


def observations(count: int) -> list:
    """Distinct frames and states, with each t-15 frame an earlier current one (as the runtime supplies)."""
    rng = np.random.default_rng(0)
    base = warmup_observation(3, CAMERAS)
    frames = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(count + 1)]
    result = []
    for k in range(count):
        cameras = {name: dataclasses.replace(camera, current=frames[k + 1], current_stamp_ns=k + 1,
                                             history=frames[k], history_stamp_ns=k)
                   for name, camera in base.cameras.items()}
        result.append(dataclasses.replace(base, stamp_ns=k + 1, cameras=cameras, instruction="pick up the block",
                                          normalized_state=rng.normal(size=14).astype(np.float32),
                                          decode_preview=k == count - 1))
    return result


@pytest.mark.slow
def test_onnxruntime_policy_matches_the_eager_policy(model_dir: Path, export_cache: Path) -> None:
    eager = load_policy(str(model_dir), cameras=CAMERAS)
    compiled = load_policy(str(model_dir), cameras=CAMERAS, backend="onnxruntime", export_cache=str(export_cache))
    assert compiled.info["foresight_kv_reuse"] is True and compiled.info["backend"] == "onnxruntime"
    for observation in observations(3):
        expected, got = eager.infer(observation), compiled.infer(observation)
        np.testing.assert_allclose(got.actions, expected.actions, atol=ACTIONS_ATOL)
    assert set(got.preview) == set(CAMERAS) and got.preview["head"].dtype == np.uint8


def test_an_unavailable_backend_is_refused_unless_fallback_is_allowed(model_dir: Path, export_cache: Path) -> None:
    with pytest.raises(BackendError, match="fallback to the next backend is off"):
        load_policy(str(model_dir), cameras=CAMERAS, backend="tensorrt,onnxruntime", export_cache=str(export_cache))
    policy = load_policy(str(model_dir), cameras=CAMERAS, backend="tensorrt,onnxruntime", fallback=True,
                         export_cache=str(export_cache))
    assert "onnxruntime" in policy.info["backend"]
    assert policy.info["skipped_backends"] and policy.info["skipped_backends"][0].startswith("tensorrt:")


def varied_observations() -> list:
    """A full set of cameras, a missing wrist camera, one camera only; short and long prompts."""
    base = observations(3)
    cameras = [dict(base[0].cameras), {k: v for k, v in base[1].cameras.items() if k != "left_wrist"},
               {"head": base[2].cameras["head"]}]
    prompts = ["go", "pick up the red block and put it in the blue bowl next to the green cup, then wait",
               "sort the parcel"]
    return [dataclasses.replace(o, cameras=c, instruction=p, recompute_foresight=True, decode_preview=True)
            for o, c, p in zip(base, cameras, prompts, strict=True)]


def test_kv_reuse_matches_recomputing_every_block(model_dir: Path) -> None:
    """The node's default path (prefix and generation K/V computed once, read by every action step)
    against the baseline that recomputes every block at every step (foresight included)."""
    cached = load_policy(str(model_dir), cameras=CAMERAS)
    uncached = load_policy(str(model_dir), cameras=CAMERAS, backend="torch-uncached")
    assert uncached.info["backend"] == "torch-uncached" and uncached.info["foresight_kv_reuse"] is False
    for observation in varied_observations():
        expected, got = cached.infer(observation), uncached.infer(observation)
        np.testing.assert_allclose(got.actions, expected.actions, atol=KV_REUSE_ATOL, rtol=0)
        assert np.abs(got.actions).max() > 10 * KV_REUSE_ATOL


def test_a_batch_equals_the_observations_one_by_one(model_dir: Path) -> None:
    policy = load_policy(str(model_dir), cameras=CAMERAS)
    sequence = varied_observations()
    batched = policy.infer_batch(sequence)
    policy.reset()
    single = [policy.infer(observation) for observation in sequence]
    assert len(batched) == len(sequence)
    for got, expected, observation in zip(batched, single, sequence, strict=True):
        np.testing.assert_allclose(got.actions, expected.actions, atol=BATCH_ATOL, rtol=0)
        assert set(got.preview) == set(observation.cameras)
        for name in got.preview:  # uint8 previews: rounding may differ by one level
            assert np.abs(got.preview[name].astype(int) - expected.preview[name].astype(int)).max() <= 1
    assert np.abs(single[0].actions - single[1].actions).max() > 10 * BATCH_ATOL
    assert policy.infer_batch([]) == []


@pytest.mark.slow
def test_onnxruntime_batch_runs_element_by_element(model_dir: Path, export_cache: Path) -> None:
    """The exported graphs have batch 1: the pipeline runs a batch one element after another."""
    compiled = load_policy(str(model_dir), cameras=CAMERAS, backend="onnxruntime", export_cache=str(export_cache))
    sequence = varied_observations()
    batched = compiled.infer_batch(sequence)
    compiled.reset()
    for got, observation in zip(batched, sequence, strict=True):
        np.testing.assert_array_equal(got.actions, compiled.infer(observation).actions)


@pytest.mark.slow
def test_onnxruntime_batch_elements_run_at_once_with_the_same_chunks(model_dir: Path, export_cache: Path) -> None:
    """With batch_workers 2 a batch's observations overlap on two threads (seen inside the graph calls), and
    every chunk, foresight and Cosmos latent is bit for bit the one of the elements one after another."""
    sequence = varied_observations()
    noise = torch.from_numpy(np.random.default_rng(5).normal(size=(len(sequence), 50, 32))).float()
    results = {}
    for workers in (1, 2):
        policy = load_policy(str(model_dir), cameras=CAMERAS, backend="onnxruntime", export_cache=str(export_cache),
                             batch_workers=workers)
        runner = policy.pipeline.stages.runner
        run, active, overlap = runner.run, [0], [0]

        def counting(graph: str, feeds: dict, run=run, active=active, overlap=overlap) -> list:
            active[0] += 1
            overlap[0] = max(overlap[0], active[0])
            try:
                return run(graph, feeds)
            finally:
                active[0] -= 1

        runner.run = counting
        results[workers] = (policy.infer_batch(sequence, noise=noise, cache_latents=True), overlap[0],
                            policy.info["backend_description"])
    (one, one_overlap, _), (two, two_overlap, description) = results[1], results[2]
    assert (one_overlap, two_overlap) == (1, 2) and "batch elements 2 at once" in description
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.actions, b.actions)
        assert set(a.preview) == set(b.preview)
        for name in a.preview:
            np.testing.assert_array_equal(a.preview[name], b.preview[name])


def test_robots_sharing_a_server_never_share_a_cached_latent(model_dir: Path) -> None:
    """Two robots whose cameras have the same names and stamps (two simulated cells in lock-step, or a camera
    that stamps every frame 0) but see different images: each robot's chunk is computed from its own frames,
    as the server's batched call with the Cosmos latent cache computes it."""
    policy = load_policy(str(model_dir), cameras=CAMERAS)
    first = observations(1)[0]
    rng = np.random.default_rng(7)
    other_frames = {name: dataclasses.replace(camera, current=rng.integers(0, 256, camera.current.shape, np.uint8),
                                              history=rng.integers(0, 256, camera.history.shape, np.uint8))
                    for name, camera in first.cameras.items()}
    second = dataclasses.replace(first, cameras=other_frames, decode_preview=False)
    first = dataclasses.replace(first, decode_preview=False)
    noise = torch.from_numpy(rng.normal(size=(2, policy.config.chunk_size, policy.config.max_action_dim))).float()
    cached = policy.infer_batch([first, second], noise=noise, cache_latents=True)
    fresh = policy.infer_batch([first, second], noise=noise, cache_latents=False)
    for got, expected in zip(cached, fresh, strict=True):
        np.testing.assert_allclose(got.actions, expected.actions, atol=BATCH_ATOL, rtol=0)
    assert np.abs(fresh[0].actions - fresh[1].actions).max() > 100 * BATCH_ATOL, "the images must matter"


def test_a_batchs_new_frames_are_encoded_in_one_call_and_known_frames_not_again(model_dir: Path) -> None:
    policy = load_policy(str(model_dir), cameras=CAMERAS)
    calls: list[int] = []  # frames per encoder call
    encode = policy.pipeline.encode_frames
    policy.pipeline.encode_frames = lambda frames: calls.append(frames.shape[0] * frames.shape[1]) or encode(frames)  # type: ignore
    rng = np.random.default_rng(3)
    robots = [observations(2) for _ in range(3)]  # each robot's second t-15 frame is its first current frame
    for sequence in robots:
        shift = rng.integers(1, 255, dtype=np.uint8)  # another robot's view: other pixels, same stamps
        for k, observation in enumerate(sequence):
            sequence[k] = dataclasses.replace(observation, decode_preview=False, cameras={
                name: dataclasses.replace(camera, current=camera.current + shift, history=camera.history + shift)
                for name, camera in observation.cameras.items()})
    policy.infer_batch([sequence[0] for sequence in robots], cache_latents=True)
    # Three robots x (t-15, t), in one call; a robot's three cameras show the same frame: encoded once.
    assert calls == [6]
    policy.infer_batch([sequence[1] for sequence in robots], cache_latents=True)
    assert calls == [6, 3], "each robot's t-15 frame was its previous current frame: only t is new"
    policy.infer_batch([dataclasses.replace(sequence[1], stamp_ns=99) for sequence in robots], cache_latents=True)
    assert calls == [6, 3], "frames seen before are never encoded again"
    two_cameras = observations(1)[0]
    cameras = {name: dataclasses.replace(two_cameras.cameras[name], current=rng.integers(0, 256, (120, 160, 3),
                                                                                       dtype=np.uint8))
               for name in ("head", "left_wrist")}
    policy.infer(dataclasses.replace(two_cameras, decode_preview=False, cameras=cameras))
    assert calls == [6, 3, 3], "the two cameras' own t frames and their shared t-15 frame; the missing slot never"


def test_noise_scale_zero_samples_every_chunk_from_the_noise_mean(model_dir: Path) -> None:
    first = observations(1)[0]
    scaled = [load_policy(str(model_dir), cameras=CAMERAS, seed=seed, noise_scale=0.0) for seed in (1, 2)]
    assert scaled[0].info["noise_scale"] == 0.0
    zero = [policy.infer(first).actions for policy in scaled]
    np.testing.assert_array_equal(zero[0], zero[1])  # no noise drawn matters: the seed does not either
    mean = load_policy(str(model_dir), cameras=CAMERAS, seed=1)  # as trained, given the zero noise by hand
    np.testing.assert_allclose(mean.infer(first, noise=torch.zeros(1, *zero[0].shape)).actions, zero[0],
                               atol=BATCH_ATOL, rtol=0)
    assert np.abs(mean.infer(first).actions - zero[0]).max() > 10 * BATCH_ATOL
    with pytest.raises(ValueError, match=r"noise_scale 1\.5: use 0"):
        load_policy(str(model_dir), cameras=CAMERAS, noise_scale=1.5)
