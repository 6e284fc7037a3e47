"""`internvla demo --remote`: the closed loop with the default model served by `internvla serve`, which the
demo starts; the node is its client over loopback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]


def test_demo_remote_closes_the_loop_through_the_server(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    done = subprocess.run([sys.executable, "-m", "internvla_ros.cli.main", "demo", "--remote", "--cell",
                           "conveyor_sorting", "--duration", "6", "--out", str(out)],
                          capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["limit_violations"] == 0 and summary["acceleration_violations"] == 0 and not summary["crashed"]
    assert summary["exit_codes"]["inference_server"] == 0, (out / "inference_server.log").read_text()[-3000:]
    remote = summary["remote"]
    assert remote["endpoint"].startswith("http://127.0.0.1:") and remote["failures"] == 0
    assert remote["requests"] >= 1 and remote["round_trip_ms_p50"] > 0  # chunks may all come too late on a loaded CPU
    assert remote["round_trip_ms_p50"] >= remote["server_inference_ms_p50"] > 0
    record = remote["server_record"]
    assert record["requests"] >= remote["requests"] - 1 and record["batch_sizes"], record  # one may be in flight
    print(json.dumps(remote, indent=1))
