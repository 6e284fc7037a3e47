"""Ctrl-C during `internvla eval` and `internvla record`: the finished episodes are kept, nothing half-done passes
for done, and no traceback. The signal goes to the whole process group, as a terminal sends it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

WAIT_S = 240.0


def interrupt_when(argv: list[str], ready: Callable[[str], bool]) -> subprocess.CompletedProcess:
    """Runs `internvla ARGV` in a process group of its own and sends the group SIGINT once ``ready`` holds for
    its standard error so far; returns the finished process with its output."""
    process = subprocess.Popen([sys.executable, "-m", "internvla_ros.cli.main", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    err: list[str] = []
    reader = threading.Thread(target=lambda: err.extend(iter(lambda: process.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + WAIT_S
    try:
        while not ready("".join(err)):
            assert process.poll() is None, "".join(err)[-3000:]
            assert time.monotonic() < deadline, "".join(err)[-3000:]
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)
        out = process.stdout.read()
        process.wait(timeout=60)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, out, "".join(err))


def test_eval_interrupted_while_homing_reports_the_finished_episode(tmp_path: Path) -> None:
    path, logs = tmp_path / "eval.json", tmp_path / "logs"
    done = interrupt_when(["eval", "--policy", "expert", "--episodes", "3", "--parcels", "1", "--json", str(path),
                           "--logs", str(logs)], lambda err: "| 1/3" in err)  # the runner has episode 0's summary
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "interrupted after 1 of 3 episodes" in done.stderr
    report = json.loads(path.read_text())
    assert report["interrupted"] is True and report["episodes"] == 1 and report["per_episode"][0]["episode"] == 0
    assert "success_rate=" in done.stdout


def test_record_interrupted_mid_episode_keeps_the_finished_bags_and_sets_the_partial_one_aside(
        tmp_path: Path) -> None:
    out = tmp_path / "bags"
    log = out / "logs" / "sim_robot.log"
    done = interrupt_when(["record", "--episodes", "3", "--parcels", "1", "--out", str(out)],
                          lambda err: log.exists() and "episode 1: seed" in log.read_text())  # episode 1 under way
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("episode_*")) == ["episode_0000"]
    assert (out / "interrupted_episode_0001" / "metadata.yaml").exists()
    assert len((out / "episodes.jsonl").read_text().splitlines()) == 1
