"""`internvla eval` end to end with the scripted expert over the real middleware, and its numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from internvla_ros.cli import eval as eval_cli
from internvla_ros.learning.eval import aggregate


def summary(episode: int, right: int, parcels: int, duration_s: float) -> dict:
    return {"episode": episode, "seed": 100 + episode, "variant": episode % 2, "instruction": "...",
            "parcels": parcels, "right": right, "wrong": 0, "dropped": 0, "missed": parcels - right,
            "success_rate": right / parcels, "duration_s": duration_s, "outcomes": []}


def test_success_rate_is_over_parcels_and_throughput_over_episode_time() -> None:
    report = aggregate([summary(0, 3, 3, 30.0), summary(1, 0, 1, 30.0)], policy="expert")
    assert (report["episodes"], report["parcels"], report["right"], report["missed"]) == (2, 4, 3, 1)
    assert report["success_rate"] == 0.75 and report["parcels_per_minute"] == 3.0
    assert [e["seed"] for e in report["per_episode"]] == [100, 101] and report["policy"] == "expert"


def test_eval_of_the_expert_on_two_held_out_episodes(tmp_path: Path, capsys) -> None:
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers(required=True))
    path = tmp_path / "eval.json"
    args = parser.parse_args(["eval", "--policy", "expert", "--episodes", "2", "--parcels", "1", "--json", str(path),
                              "--logs", str(tmp_path / "logs")])
    assert args.func(args) == 0
    report = json.loads(path.read_text())
    assert (report["episodes"], report["parcels"], report["seed"]) == (2, 2, 1_000_000)
    assert [e["seed"] for e in report["per_episode"]] == [1_000_000, 1_000_001]
    assert {e["variant"] for e in report["per_episode"]} == {0, 1}
    assert report["success_rate"] == report["right"] / 2 >= 0.5, report
    assert report["parcels_per_minute"] > 0
    assert f"success_rate={report['success_rate']:.3f}" in capsys.readouterr().out
