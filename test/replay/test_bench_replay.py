"""``internvla bench replay`` on a generated sim bag: the figures it reports are consistent and real."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from internvla_ros.cli import bench_replay
from test.replay.conftest import INSTRUCTION


def _run(*args: str) -> int:
    parser = argparse.ArgumentParser()
    bench_replay.register(parser.add_subparsers())
    parsed = parser.parse_args(["bench", "replay", *args])
    return int(parsed.func(parsed))


def test_reports_speed_wall_bag_and_memory(sim_bag: Path, model_dir: Path, tmp_path: Path,
                                            capsys) -> None:
    out = tmp_path / "bench.json"
    code = _run(str(sim_bag), "--config", "conveyor_sorting.yaml", "--model", str(model_dir),
                "--instruction", INSTRUCTION, "--batch", "4", "--json", str(out))
    assert code == 0
    result = json.loads(out.read_text())
    assert 2.5 < result["bag_s"] < 3.5  # the sim bag lasts 3 s
    assert result["wall_s"] > 0 and result["max_rss_mb"] > 0
    assert abs(result["speed_x_real_time"] - result["bag_s"] / result["wall_s"]) <= 0.01 * result["speed_x_real_time"]
    assert result["chunks"] >= 1 and result["inferences"] >= result["chunks"]
    assert result["inference_ms_median"] >= 0
    # Batched: the look-ahead thread computed most chunks before the replay loop asked.
    assert result["batch"] == 4 and result["threads"] == 2
    assert result["inferences"] // 2 <= result["precomputed"] <= result["inferences"]
    assert "speed_x_real_time" in capsys.readouterr().out


def test_unusable_bag_exits_2(model_dir: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no_such_bag"
    assert _run(str(missing), "--config", "conveyor_sorting.yaml", "--model", str(model_dir)) == 2
    assert "ERROR" in capsys.readouterr().err
