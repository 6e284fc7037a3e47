"""`internvla demo`: the README's main command, end to end (sim + node processes, default model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from internvla_ros.bags.types import typestore

SUMMARY_KEYS = {"commands_sent", "control_rate_hz", "chunks", "inference_rate_hz", "obs_to_command_latency_ms_p50",
                "obs_to_command_latency_ms_p99", "limit_violations", "clamped", "stale_events"}


@pytest.mark.slow
def test_demo_writes_summary_recording_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "internvla_ros.cli.main", "demo", "--cell", "conveyor_sorting",
                             "--duration", "6", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["limit_violations"] == 0
    assert summary["chunks"] > 0 and summary["commands_sent"] > 0
    assert summary["control_rate_hz"] == pytest.approx(100.0, rel=0.1)  # conveyor_sorting.yaml
    assert 0 < summary["obs_to_command_latency_ms_p50"] <= summary["obs_to_command_latency_ms_p99"]
    assert (out / "joints.png").stat().st_size > 10_000
    with AnyReader([out / "recording"], default_typestore=typestore()) as reader:
        topics = {c.topic: c.msgtype for c in reader.connections}
        assert topics["/demo/arm_controller/joint_trajectory"] == "trajectory_msgs/msg/JointTrajectory"
        assert topics["/demo/policy_node/action_chunk"] == "internvla_ros/msg/ActionChunk"
        assert topics["/demo/cameras/head/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
        chunk_connection = [c for c in reader.connections if c.topic == "/demo/policy_node/action_chunk"]
        first = next(reader.messages(connections=chunk_connection))
        chunk = reader.deserialize(first[2], first[0].msgtype)
        assert chunk.horizon == 50 and len(chunk.positions) == 50 * len(chunk.joint_names)
