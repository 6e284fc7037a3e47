"""`internvla dataset from-bags` and `internvla model add-stats` on bags written here (two robot configs)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from internvla_ros.cli import dataset as dataset_cli
from internvla_ros.cli import model_stats as stats_cli
from internvla_ros.learning.dataset_layout import (
    CODEBASE_VERSION,
    DATA_PATH,
    EPISODES_PATH,
    VIDEO_PATH,
    DatasetError,
    FileLimits,
    next_file,
)
from internvla_ros.learning.dataset_reader import frame_cache, open_dataset
from internvla_ros.learning.dataset_video import CODEC_TOLERANCE, decode_frames
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.paths import default_model_dir, share_dir
from internvla_ros.runtime.config import NS_PER_S, RuntimeConfig
from test.learning.bagfactory import ARM_YAML, Spec, camera_times, image_index, joint_times, ramp, write_bag

CONVEYOR = share_dir() / "config" / "conveyor_sorting.yaml"
FPS = 30.0
GAP = (1.0, 1.3)
CONVEYOR_SPEC = Spec(duration_s=3.0, joint_gap_s=GAP, instructions=((0.0, "sort the parcels"), (2.0, "stop the belt")))
ARM_SPEC = Spec(duration_s=2.0, teleop_topic="/leader/joint_states", commands=False)
VALUE_TOL = 1e-5  # float32 storage of values up to a few units


def run(argv: list[str], register: object) -> int:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())  # type: ignore[operator]
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def conveyor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("conveyor")
    bag = write_bag(root / "bag", CONVEYOR, CONVEYOR_SPEC)
    assert run(["dataset", "from-bags", str(bag), "--config", str(CONVEYOR), "--out", str(root / "ds")],
               dataset_cli.register) == 0
    return root / "ds"


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("arm")
    config = root / "arm6.yaml"
    config.write_text(ARM_YAML)
    bag = write_bag(root / "bag", config, ARM_SPEC)
    assert run(["dataset", "from-bags", str(bag), "--config", str(config), "--out", str(root / "ds"),
                "--action-topic", "/leader/joint_states"], dataset_cli.register) == 0
    return root / "ds", config


def latest(times: list[int], t: int) -> int | None:
    """The last send time at or before t."""
    index = np.searchsorted(np.asarray(times), t, side="right") - 1
    return times[index] if index >= 0 else None


def tick(k: int) -> int:
    return round(k * NS_PER_S / FPS)


def frame_ticks(states: np.ndarray, spec: Spec) -> list[int]:
    """The grid tick of each frame of one episode, found from its first state (joint 0 = send time)."""
    js = joint_times(spec)
    first = [k for k in range(int(spec.duration_s * FPS) + 1)
             if latest(js, tick(k)) is not None and abs(latest(js, tick(k)) / NS_PER_S - states[0, 0]) < VALUE_TOL]
    assert len(first) == 1
    return [first[0] + i for i in range(len(states))]


def read(root: Path) -> tuple[dict, dict[str, np.ndarray], list[dict]]:
    info = json.loads((root / "meta/info.json").read_text())
    table = pq.read_table(root / DATA_PATH.format(chunk_index=0, file_index=0))
    columns = {name: np.asarray(table.column(name).to_pylist()) for name in table.column_names}
    episodes = pq.read_table(root / EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pylist()
    return info, columns, episodes


def test_layout_follows_lerobot_v3(conveyor: Path) -> None:
    info, columns, episodes = read(conveyor)
    assert info["codebase_version"] == CODEBASE_VERSION and info["robot_type"] == "franka" and info["fps"] == FPS
    for key in ("total_episodes", "total_frames", "total_tasks", "chunks_size", "data_files_size_in_mb",
                "video_files_size_in_mb", "splits", "data_path", "video_path", "features"):
        assert key in info
    frames = len(columns["index"])
    assert info["total_frames"] == frames == sum(e["length"] for e in episodes)
    assert info["total_episodes"] == len(episodes) == 3  # split at the joint-state gap and at the new task
    assert info["splits"] == {"train": "0:3"}
    features = info["features"]
    assert features["observation.state"]["shape"] == [9] == features["action"]["shape"]
    assert features["observation.state"]["names"] == list(RuntimeConfig.from_yaml(CONVEYOR).joint_names)
    for camera in ("head", "wrist"):
        video = features[f"observation.images.{camera}"]
        assert video["dtype"] == "video" and video["shape"] == [48, 64, 3]
        assert video["info"]["video.codec"] == "h264" and video["info"]["video.fps"] == FPS
    assert set(columns) == {"observation.state", "action", "timestamp", "frame_index", "episode_index", "index",
                            "task_index"}
    np.testing.assert_array_equal(columns["index"], np.arange(frames))
    tasks = pq.read_table(conveyor / "meta/tasks.parquet")
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]
    assert tasks.to_pylist() == [{"task_index": 0, "task": "sort the parcels"},
                                 {"task_index": 1, "task": "stop the belt"}]
    for episode in episodes:
        rows = slice(episode["dataset_from_index"], episode["dataset_to_index"])
        assert set(columns["episode_index"][rows]) == {episode["episode_index"]}
        np.testing.assert_array_equal(columns["frame_index"][rows], np.arange(episode["length"]))
        np.testing.assert_allclose(columns["timestamp"][rows], np.arange(episode["length"]) / FPS, atol=1e-6)
        assert episode["videos/observation.images.head/from_timestamp"] * FPS == pytest.approx(rows.start)
        assert episode["videos/observation.images.head/to_timestamp"] * FPS == pytest.approx(rows.stop)
        assert np.allclose(episode["stats/action/mean"], columns["action"][rows].mean(axis=0), atol=1e-5)
    assert [e["tasks"] for e in episodes] == [["sort the parcels"]] * 2 + [["stop the belt"]]
    stats = json.loads((conveyor / "meta/stats.json").read_text())
    np.testing.assert_allclose(stats["observation.state"]["mean"], columns["observation.state"].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], columns["action"].std(axis=0), atol=1e-5)
    assert stats["action"]["count"] == [frames]
    assert np.asarray(stats["observation.images.head"]["mean"]).shape == (3, 1, 1)


def test_resampling_never_looks_ahead(conveyor: Path) -> None:
    _, columns, episodes = read(conveyor)
    config = RuntimeConfig.from_yaml(CONVEYOR)
    js, cams = joint_times(CONVEYOR_SPEC), camera_times(CONVEYOR_SPEC)
    head = list(decode_frames(conveyor / VIDEO_PATH.format(video_key="observation.images.head", chunk_index=0,
                                                           file_index=0)))
    assert len(head) == len(columns["index"])
    arm_joints = [config.joint_index[f"fr3_joint{i}"] for i in range(1, 8)]
    belt = config.joint_index["conveyor_speed"]
    for episode in episodes:
        rows = slice(episode["dataset_from_index"], episode["dataset_to_index"])
        states, actions = columns["observation.state"][rows], columns["action"][rows]
        for offset, k in enumerate(frame_ticks(states, CONVEYOR_SPEC)):
            t = tick(k)
            assert states[offset, 0] == pytest.approx(latest(js, t) / NS_PER_S, abs=VALUE_TOL)
            assert t - latest(js, t) <= config.safety.joint_state_max_age_ns  # older states end an episode
            # the trajectory controller follows ramp(t) exactly as executed; the belt holds its last command
            np.testing.assert_allclose(actions[offset, arm_joints], ramp(t / NS_PER_S, 9)[arm_joints], atol=VALUE_TOL)
            assert actions[offset, belt] == pytest.approx(latest(list(range(0, 3 * NS_PER_S, 10**7)), t) / NS_PER_S,
                                                          abs=VALUE_TOL)
            assert image_index(head[rows.start + offset]) == cams.index(latest(cams, t))
    conversion = json.loads((conveyor / "meta/conversion.json").read_text())
    gap_ticks = [k for k in range(int(3.0 * FPS) + 1) if latest(js, tick(k)) is not None
                 and tick(k) - latest(js, tick(k)) > config.safety.joint_state_max_age_ns]
    assert conversion["dropped_frames"]["stale_state"] == len(gap_ticks) > 0


def test_video_decodes_to_the_recorded_frames(conveyor: Path) -> None:
    """Every decoded frame equals the recorded image within the codec tolerance."""
    from test.learning.bagfactory import _image

    _, columns, episodes = read(conveyor)
    cams = camera_times(CONVEYOR_SPEC)
    video = conveyor / VIDEO_PATH.format(video_key="observation.images.wrist", chunk_index=0, file_index=0)
    frames = list(decode_frames(video))
    worst = 0
    for episode in episodes:
        rows = slice(episode["dataset_from_index"], episode["dataset_to_index"])
        for offset, k in enumerate(frame_ticks(columns["observation.state"][rows], CONVEYOR_SPEC)):
            expected = _image(cams.index(latest(cams, tick(k))), 48, 64)
            worst = max(worst, int(np.abs(frames[rows.start + offset].astype(int) - expected).max()))
    assert worst <= CODEC_TOLERANCE


def test_new_arm_with_one_camera_and_a_leader_arm(arm: tuple[Path, Path]) -> None:
    root, _ = arm
    info, columns, episodes = read(root)
    assert info["robot_type"] == "test_arm6" and len(episodes) == 1
    assert [k for k in info["features"] if k.startswith("observation.images.")] == ["observation.images.front"]
    assert info["internvla_ros"]["camera_slots"] == {"front": 0}
    leader = list(range(0, 2 * NS_PER_S, 10**7))
    for offset, k in enumerate(frame_ticks(columns["observation.state"], ARM_SPEC)):
        sent = latest(leader, tick(k))
        np.testing.assert_allclose(columns["action"][offset], ramp(sent / NS_PER_S, 6), atol=VALUE_TOL)


def test_refuses_bags_without_the_configs_topics(arm: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _, config = arm
    bag = write_bag(tmp_path / "bag", config, Spec(duration_s=0.5, commands=False))
    assert run(["dataset", "from-bags", str(bag), "--config", str(CONVEYOR), "--out", str(tmp_path / "a")],
               dataset_cli.register) == 2
    assert "/cameras/head/image_raw" in capsys.readouterr().err
    assert run(["dataset", "from-bags", str(bag), "--config", str(config), "--out", str(tmp_path / "b")],
               dataset_cli.register) == 2
    assert "lacks the command topics /arm_controller/joint_trajectory" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_add_stats_writes_the_robot_type_and_refuses_other_dims(
        arm: tuple[Path, Path], conveyor: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, config = arm
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    with pytest.raises(Exception, match="robot type 'test_arm6' not in"):
        NormalizationStats.load(model / "stats.json", "test_arm6")
    assert run(["model", "add-stats", str(model), "--dataset", str(root), "--robot-type", "test_arm6",
                "--config", str(config)], stats_cli.register) == 0
    stats = NormalizationStats.load(model / "stats.json", "test_arm6")
    _, columns, _ = read(root)
    np.testing.assert_allclose(stats.state_mean, columns["observation.state"].mean(axis=0), atol=1e-5)
    assert stats.action_dim == 6 and NormalizationStats.load(model / "stats.json", "franka").action_dim == 9
    assert run(["model", "add-stats", str(model), "--dataset", str(conveyor), "--robot-type", "test_arm6"],
               stats_cli.register) == 2
    assert "already in stats.json with 6-dim state" in capsys.readouterr().err
    assert run(["model", "add-stats", str(model), "--dataset", str(conveyor), "--robot-type", "franka",
                "--config", str(config)], stats_cli.register) == 2
    assert "differ from the dataset's" in capsys.readouterr().err


def test_files_roll_over_at_episode_boundaries_and_read_back_as_one_dataset(conveyor: Path, tmp_path: Path) -> None:
    """Tiny size limits: every episode ends its data and video files, as LeRobot's writer does at its limits."""
    bag = write_bag(tmp_path / "bag", CONVEYOR, CONVEYOR_SPEC)
    split = tmp_path / "split"
    assert run(["dataset", "from-bags", str(bag), "--config", str(CONVEYOR), "--out", str(split),
                "--data-file-size-mb", "0.000001", "--video-file-size-mb", "0.000001"], dataset_cli.register) == 0
    info = json.loads((split / "meta/info.json").read_text())
    assert info["data_files_size_in_mb"] == 0.000001 and info["video_files_size_in_mb"] == 0.000001
    assert sorted(p.name for p in (split / "data/chunk-000").iterdir()) == [f"file-00{i}.parquet" for i in range(3)]
    episodes = pq.read_table(split / EPISODES_PATH.format(chunk_index=0, file_index=0)).to_pylist()
    for i, episode in enumerate(episodes):
        assert (episode["data/chunk_index"], episode["data/file_index"]) == (0, i)
        for camera in ("head", "wrist"):
            key = f"videos/observation.images.{camera}"
            assert (episode[f"{key}/chunk_index"], episode[f"{key}/file_index"]) == (0, i)
            assert episode[f"{key}/from_timestamp"] == 0.0
            assert episode[f"{key}/to_timestamp"] * FPS == pytest.approx(episode["length"])
            video = split / VIDEO_PATH.format(video_key=f"observation.images.{camera}", chunk_index=0, file_index=i)
            assert sum(1 for _ in decode_frames(video)) == episode["length"]
    assert info["features"]["observation.images.head"]["shape"] == [48, 64, 3]

    whole, parts = open_dataset(conveyor), open_dataset(split)
    np.testing.assert_array_equal(parts.states, whole.states)
    np.testing.assert_array_equal(parts.actions, whole.actions)
    assert parts.episodes == whole.episodes and len(parts.video_files["head"]) == 3
    for camera in ("head", "wrist"):
        one = frame_cache(whole, camera, tmp_path / "cache_whole", (32, 32))
        many = frame_cache(parts, camera, tmp_path / "cache_parts", (32, 32))
        assert one.shape == many.shape == (len(whole), 32, 32, 3)
        assert int(np.abs(one.astype(int) - many.astype(int)).max()) <= CODEC_TOLERANCE


def test_a_cache_of_some_frames_is_rebuilt_for_other_frames_and_refuses_a_mask_of_another_length(
        conveyor: Path, tmp_path: Path) -> None:
    data = open_dataset(conveyor)
    needed = np.zeros(len(data), dtype=bool)
    needed[::5] = True
    first = frame_cache(data, "head", tmp_path / "cache", (32, 32), needed)
    assert first[needed].any(axis=(1, 2, 3)).all() and not first[1].any()
    needed[1] = True
    again = frame_cache(data, "head", tmp_path / "cache", (32, 32), needed)
    np.testing.assert_array_equal(again[1], frame_cache(data, "head", tmp_path / "whole", (32, 32))[1])
    with pytest.raises(ValueError, match="needed"):
        frame_cache(data, "head", tmp_path / "cache", (32, 32), needed[:-1])


def test_a_rebuilt_cache_leaves_the_frames_a_running_reader_mapped(conveyor: Path, tmp_path: Path) -> None:
    """A training run maps the cache; check-chunks on the same cache for other frames rebuilds it. The run
    must keep reading its frames (rewritten in place, they turned black under it)."""
    data = open_dataset(conveyor)
    needed = np.zeros(len(data), dtype=bool)
    needed[::5] = True
    running = frame_cache(data, "head", tmp_path / "cache", (32, 32), needed)
    before = np.array(running)
    rebuilt = frame_cache(data, "head", tmp_path / "cache", (32, 32))  # every frame: another tag
    np.testing.assert_array_equal(running, before)
    assert rebuilt[1].any() and not running[1].any()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["frames_head.json", "frames_head.npy"]
    np.testing.assert_array_equal(frame_cache(data, "head", tmp_path / "cache", (32, 32)), rebuilt)  # reused


def test_a_dataset_whose_episodes_leave_their_video_files_out_of_order_is_refused(conveyor: Path,
                                                                                   tmp_path: Path) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(conveyor, copy)
    path = copy / EPISODES_PATH.format(chunk_index=0, file_index=0)
    rows = pq.read_table(path).to_pylist()
    rows[1]["videos/observation.images.wrist/from_timestamp"] += 0.5  # a gap inside the wrist file
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetError, match=r"episode 1 starts at .* of its observation\.images\.wrist file"):
        open_dataset(copy)
    key = "videos/observation.images.wrist"
    rows[1] |= {f"{key}/file_index": 1, f"{key}/from_timestamp": 0.0,  # episode 1 alone in file 1,
                f"{key}/to_timestamp": rows[1]["length"] / FPS}  # then episode 2 back in file 0
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DatasetError, match=r"episode 2 returns to an earlier observation\.images\.wrist file"):
        open_dataset(copy)


def test_file_limits_and_the_next_file_name() -> None:
    assert next_file((0, 0)) == (0, 1) and next_file((0, 999)) == (1, 0)
    with pytest.raises(DatasetError, match="must be positive"):
        FileLimits(data_mb=0)


def test_a_size_limit_that_is_not_positive_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag = write_bag(tmp_path / "bag", CONVEYOR, Spec(duration_s=0.5))
    assert run(["dataset", "from-bags", str(bag), "--config", str(CONVEYOR), "--out", str(tmp_path / "ds"),
                "--video-file-size-mb", "0"], dataset_cli.register) == 2
    assert "file size limits must be positive" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
