"""``internvla replay`` end to end on generated sim bags: determinism, golden checks, storage formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from rosbags.highlevel import AnyReader

from internvla_ros.paths import config_path
from test.replay.bagfactory import BagSpec, write_sim_bag
from test.replay.conftest import Replay

EXIT_UNUSABLE_IN_ANOTHER_NAMESPACE = 2


def _files(bag: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bag.iterdir())}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("out")


def test_same_inputs_give_byte_identical_bags_that_pass_as_golden(
        replay: Replay, sim_bag: Path, outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = outputs / "a" / "out", outputs / "b" / "out"
    first.parent.mkdir()
    second.parent.mkdir()
    assert replay(sim_bag, "--out", str(first)) == 0
    assert replay(sim_bag, "--out", str(second), "--golden", str(first)) == 0
    assert _files(first) == _files(second)
    text = capsys.readouterr().out
    assert "RESULT: within tolerance" in text
    assert "chunks: " in text and " 0 missing, 0 extra" in text
    # Decodable without this package's types: the definitions are embedded.
    with AnyReader([first]) as reader:
        topics = {name: info.msgtype for name, info in reader.topics.items()}
        assert topics == {
            "/arm_controller/joint_trajectory": "trajectory_msgs/msg/JointTrajectory",
            "/gripper_controller/commands": "std_msgs/msg/Float64MultiArray",
            "/conveyor_controller/commands": "std_msgs/msg/Float64MultiArray",
            "/policy_node/action_chunk": "internvla_ros/msg/ActionChunk",
            "/policy_node/status": "internvla_ros/msg/PolicyStatus",
        }
        chunk = next(reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                     if c.topic == "/policy_node/action_chunk")
        assert chunk.horizon == 50 and len(chunk.joint_names) == 9 and chunk.positions.size == 50 * 9
    assert yaml.safe_load((first / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == 9
    assert not [p for p in outputs.rglob(".replay-*")]


def test_another_seed_is_out_of_tolerance_per_joint(
        replay: Replay, sim_bag: Path, outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = outputs / "a" / "out"
    if not golden.exists():
        assert replay(sim_bag, "--out", str(golden)) == 0
    capsys.readouterr()
    assert replay(sim_bag, "--golden", str(golden), "--seed", "1") == 1
    text = capsys.readouterr().out
    assert "RESULT: OUT OF TOLERANCE" in text
    rows = [line for line in text.splitlines() if line.startswith(("fr3_", "conveyor_speed"))]
    assert len(rows) == 9
    assert any(row.endswith("OUT OF TOLERANCE") for row in rows)
    assert "  - fr3_joint" in text and "(allowed 0.01)" in text


def test_noise_scale_zero_replays_the_same_whatever_the_seed(
        replay: Replay, sim_bag: Path, outputs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {name: outputs / "zero" / name / "out" for name in ("seed0", "seed1", "noisy1")}
    for name, extra in (("seed0", ("--noise-scale", "0")), ("seed1", ("--noise-scale", "0", "--seed", "1")),
                        ("noisy1", ("--seed", "1"))):
        runs[name].parent.mkdir(parents=True)
        assert replay(sim_bag, "--out", str(runs[name]), *extra) == 0
    assert _files(runs["seed0"]) == _files(runs["seed1"])  # no noise drawn matters, so the seed does not
    assert _files(runs["seed0"]) != _files(runs["noisy1"])


def test_a_changed_limit_is_out_of_tolerance_on_that_joint(
        replay: Replay, sim_bag: Path, outputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    golden = outputs / "a" / "out"
    if not golden.exists():
        assert replay(sim_bag, "--out", str(golden)) == 0
    text = config_path("conveyor_sorting.yaml").read_text()
    slow = text.replace("fr3_joint1: {min_position: -2.74, max_position: 2.74, max_velocity: 2.62",
                        "fr3_joint1: {min_position: -2.74, max_position: 2.74, max_velocity: 0.01")
    assert slow != text
    (tmp_path / "slow.yaml").write_text(slow)
    capsys.readouterr()
    assert replay(sim_bag, "--golden", str(golden), config=str(tmp_path / "slow.yaml")) == 1
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("fr3_")}
    assert rows["fr3_joint1"].endswith("OUT OF TOLERANCE")


def test_sqlite3_bag_against_its_own_recording_with_a_report(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "sim_sqlite3", spec=BagSpec(storage="sqlite3", version=8, duration_s=2.0))
    report = tmp_path / "report"
    # The untrained model does not do what the scripted operator did: out of tolerance, per joint.
    assert replay(bag, "--golden", str(bag), "--report", str(report)) == 1
    text = capsys.readouterr().out
    assert "chunks: the golden bag has no action_chunk topic; not compared" in text
    assert {p.name for p in report.iterdir()} == {
        "report.md", "inference_latency.png", "joints_arm_controller.png", "joints_gripper_controller.png",
        "joints_conveyor_controller.png"}
    assert "RESULT: OUT OF TOLERANCE" in (report / "report.md").read_text()


def test_joint_state_gap_holds_and_is_reported(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Also a zstd file-compressed bag (rosbag2 `--compression-mode file`), which rosbags reads.
    bag = write_sim_bag(tmp_path / "gap", spec=BagSpec(duration_s=2.5, joint_gap_s=(1.0, 1.3), compression="file"))
    assert [p.name for p in bag.glob("*.zstd")] == ["gap.mcap.zstd"]
    out = tmp_path / "out"
    assert replay(bag, "--out", str(out)) == 0
    text = capsys.readouterr().out
    assert "WARNING: no joint_states from 0.990 s to 1.300 s" in text
    assert "hold: holding from" in text
    with AnyReader([out]) as reader:
        states = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()
                  if c.topic == "/policy_node/status"]
    assert any(s.state == s.STATE_HOLDING or s.stale_inputs > 0 for s in states)


def test_camera_size_change_is_accepted_and_reported(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "resize", spec=BagSpec(duration_s=2.0, resize_camera_at_s=("head", 1.0),
                                                          compression="message"))
    assert replay(bag) == 0
    assert "WARNING: camera head changed size (120, 160) -> (60, 80) at 1.0" in capsys.readouterr().out


def test_a_bag_without_metadata_is_read_from_its_storage_files(
        replay: Replay, sim_bag: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = tmp_path / "no_metadata"
    shutil.copytree(sim_bag, bag)
    (bag / "metadata.yaml").unlink()
    assert replay(bag) == 0
    assert "has no metadata.yaml: its 1 storage files were read directly" in capsys.readouterr().out


def test_namespace_resolves_inputs_and_outputs(replay: Replay, tmp_path: Path) -> None:
    bag = write_sim_bag(tmp_path / "cell_2", spec=BagSpec(duration_s=2.0, namespace="/cell_2"))
    assert replay(bag, "--namespace", "/") == EXIT_UNUSABLE_IN_ANOTHER_NAMESPACE  # as given, not searched
    out = tmp_path / "out"
    assert replay(bag, "--namespace", "/cell_2", "--remap", "~/status:=/monitor/status", "--out", str(out)) == 0
    with AnyReader([out]) as reader:
        assert sorted(reader.topics) == ["/cell_2/arm_controller/joint_trajectory",
                                         "/cell_2/conveyor_controller/commands", "/cell_2/gripper_controller/commands",
                                         "/cell_2/policy_node/action_chunk", "/monitor/status"]
