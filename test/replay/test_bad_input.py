"""Unusable input: exit code 2, one ERROR line naming the problem, no traceback, no output bag left."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from test.replay.bagfactory import EPOCH_NS, BagSpec, write_sim_bag
from test.replay.conftest import Replay

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rosbag2"
EXIT_UNUSABLE = 2


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), captured.err
    return lines[0]


def _no_output_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(".replay-*"))


@pytest.mark.parametrize("name", ["talker_mcap", "talker_sqlite3", "empty_bag", "multiple_files_no_metadata"])
def test_rosbag2_fixtures_without_robot_topics(
        replay: Replay, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert replay(FIXTURES / name, "--out", str(out)) == EXIT_UNUSABLE
    error = _error(capsys)
    assert "the bag lacks /joint_states, /cameras/head/image_raw, /cameras/wrist/image_raw" in error
    assert "The config expects /joint_states, /cameras/head/image_raw (or /cameras/head/image_raw/compressed)" in error
    if name == "multiple_files_no_metadata":
        assert "(no metadata.yaml: read the 3 storage files directly)" in error
        assert "the bag has /chatter [std_msgs/msg/String, 3177]" in error
    elif name == "empty_bag":
        assert "/rosout [rcl_interfaces/msg/Log, 0]" in error
    else:
        assert "/topic [std_msgs/msg/String, 10]" in error
    _no_output_left(out)


def test_truncated_mcap(replay: Replay, sim_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = tmp_path / "truncated"
    shutil.copytree(sim_bag, bag)
    storage = next(bag.glob("*.mcap"))
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size // 2])
    assert replay(bag, "--out", str(tmp_path / "out")) == EXIT_UNUSABLE
    assert "cannot read the bag (damaged, truncated or not a rosbag2?)" in _error(capsys)
    _no_output_left(tmp_path / "out")


def test_corrupt_sqlite3(replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = tmp_path / "corrupt"
    shutil.copytree(FIXTURES / "talker_sqlite3", bag)
    (bag / "talker.db3").write_bytes(b"this is not a database" * 100)
    assert replay(bag) == EXIT_UNUSABLE
    assert "cannot read the bag" in _error(capsys)


def test_not_a_bag(replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert replay(tmp_path / "notes.txt") == EXIT_UNUSABLE
    assert "not a rosbag2 directory or storage file" in _error(capsys)
    assert replay(tmp_path / "missing") == EXIT_UNUSABLE
    assert "no such bag" in _error(capsys)


def test_unknown_message_type_on_an_input_topic(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = get_typestore(Stores.ROS2_JAZZY)
    store.register(get_types_from_msg("string[] name\nfloat64[] position", "acme_msgs/msg/JointSample"))
    sample = store.types["acme_msgs/msg/JointSample"]
    image = store.types["sensor_msgs/msg/Image"]
    header = store.types["std_msgs/msg/Header"](stamp=store.types["builtin_interfaces/msg/Time"](sec=1, nanosec=0),
                                                frame_id="")
    bag = tmp_path / "acme"
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        joints = writer.add_connection("/joint_states", "acme_msgs/msg/JointSample", typestore=store)
        cameras = [writer.add_connection(f"/cameras/{c}/image_raw", "sensor_msgs/msg/Image", typestore=store)
                   for c in ("head", "wrist")]
        for k in range(3):
            stamp = EPOCH_NS + k * 1_000_000_000
            writer.write(joints, stamp, store.serialize_cdr(sample(name=["a"], position=np.zeros(1)),
                                                            "acme_msgs/msg/JointSample"))
            for camera in cameras:
                message = image(header=header, height=1, width=1, encoding="rgb8", is_bigendian=0, step=3,
                                data=np.zeros(3, np.uint8))
                writer.write(camera, stamp, store.serialize_cdr(message, "sensor_msgs/msg/Image"))
    assert replay(bag) == EXIT_UNUSABLE
    assert "/joint_states carries acme_msgs/msg/JointSample; the policy node reads sensor_msgs/msg/JointState" in \
        _error(capsys)


def test_bag_shorter_than_one_chunk(replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "short", spec=BagSpec(duration_s=1.0))
    assert replay(bag) == EXIT_UNUSABLE
    assert "the bag lasts 1.000 s, shorter than one chunk (50 steps at 30 Hz = 1.633 s)" in _error(capsys)


def test_camera_that_never_decodes_leaves_no_output(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "bad_step", spec=BagSpec(duration_s=2.0, corrupt_camera="head"))
    out = tmp_path / "out"
    assert replay(bag, "--out", str(out)) == EXIT_UNUSABLE
    error = _error(capsys)
    assert "the policy never started: camera head: 30 images rejected (step 481 does not match width 160" in error
    _no_output_left(out)


def test_missing_instruction_and_bad_options(
        replay: Replay, sim_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay(sim_bag, "--instruction", "") == EXIT_UNUSABLE
    assert "no instruction: the bag has no /instruction topic" in _error(capsys)
    assert replay(sim_bag, "--remap", "joint_states") == EXIT_UNUSABLE
    assert "expected FROM:=TO" in _error(capsys)
    (tmp_path / "tolerance.yaml").write_text("position: [1, 2]\n")
    assert replay(sim_bag, "--golden", str(sim_bag), "--tolerance", str(tmp_path / "tolerance.yaml")) == EXIT_UNUSABLE
    assert "expected a mapping" in _error(capsys)
    assert replay(sim_bag, "--golden", str(FIXTURES / "talker_mcap")) == EXIT_UNUSABLE
    assert "none of the command topics the config produces is in the golden bag" in _error(capsys)
    assert replay(sim_bag, config=str(tmp_path / "missing.yaml")) == EXIT_UNUSABLE
    assert "--config:" in _error(capsys)
    assert replay(sim_bag, model=tmp_path) == EXIT_UNUSABLE
    assert "--model" in _error(capsys)


def test_existing_output_is_not_overwritten(
        replay: Replay, sim_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert replay(sim_bag, "--out", str(out)) == EXIT_UNUSABLE
    assert "already exists" in _error(capsys)
