"""`internvla record` end to end: sim_robot and the scripted expert over the real middleware, one real
mcap rosbag2 per episode with what a dataset needs; and the seed ranges it accepts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from internvla_ros.cli import record
from internvla_ros.learning.record import EVAL_SEED_START, check_training_seeds, episode_specs
from internvla_ros.sim.task import EpisodeSpec, instruction

NS = "/sorting"


def run_cli(module: object, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    module.register(parser.add_subparsers(required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


def test_episodes_cover_both_rules_and_training_seeds_stay_below_the_held_out_range() -> None:
    assert episode_specs(10, 3, 2) == [EpisodeSpec(10, 0, 2, 0), EpisodeSpec(11, 1, 2, 1), EpisodeSpec(12, 0, 2, 2)]
    check_training_seeds(EVAL_SEED_START - 5, EVAL_SEED_START - 1)
    with pytest.raises(ValueError, match="reach the held-out evaluation range"):
        check_training_seeds(EVAL_SEED_START - 5, EVAL_SEED_START)
    with pytest.raises(ValueError, match="--episodes must be 1 or more"):
        episode_specs(0, 0, 2)


def test_both_rules_records_each_seed_under_each_rule() -> None:
    specs = episode_specs(7, 4, 3, both_rules=True)
    assert [(s.seed, s.variant, s.episode) for s in specs] == [(7, 1, 0), (7, 0, 1), (8, 0, 2), (8, 1, 3)]
    with pytest.raises(ValueError, match="even --episodes"):
        episode_specs(7, 3, 3, both_rules=True)
    with pytest.raises(ValueError, match=r"--seed must be in 0\.\.2147483647 for 2 episodes"):
        episode_specs(2**31, 2, 3, both_rules=True)
    assert {s.red_share for s in episode_specs(7, 4, 3, both_rules=True, red_share=0.75)} == {0.75}
    assert {s.red_share for s in specs} == {None}
    with pytest.raises(ValueError, match=r"--red-share .* in \[0, 1\], got 1.5"):
        episode_specs(7, 4, 3, both_rules=True, red_share=1.5)
    assert {s.lanes_m for s in episode_specs(7, 4, 3, lanes_m=(0.0125, 0.0375))} == {(0.0125, 0.0375)}
    assert {s.lanes_m for s in specs} == {None}


def test_record_refuses_lanes_off_the_belt_before_anything_starts(tmp_path: Path, capsys) -> None:
    from internvla_ros.cli.main import main

    assert main(["record", "--episodes", "2", "--lanes-mm", "10", "60", "--out", str(tmp_path / "bags")]) == 2
    assert "--lanes-mm 10 60: [0.01, 0.06] m: give min <= max within [-0.05, 0.05] m" in capsys.readouterr().err
    assert not (tmp_path / "bags").exists()


def test_record_writes_one_bag_per_episode_with_the_experts_sorting(tmp_path: Path) -> None:
    out = tmp_path / "bags"
    assert run_cli(record, "record", "--episodes", "1", "--parcels", "2", "--seed", "4", "--out", str(out)) == 0
    summaries = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert [(s["seed"], s["right"], s["parcels"]) for s in summaries] == [(4, 2, 2)], summaries
    with AnyReader([out / "episode_0000"]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        texts = {c.topic: [reader.deserialize(raw, c.msgtype).data for _, _, raw in reader.messages([c])]
                 for c in reader.connections if c.msgtype == "std_msgs/msg/String" and c.msgcount}
    assert texts[f"{NS}/instruction"] == [instruction(0)]
    outcomes = [json.loads(text) for text in texts[f"{NS}/task/outcome"]]
    assert [o["outcome"] for o in outcomes] == ["right", "right"]
    assert json.loads(texts[f"{NS}/task/summary"][0])["right"] == 2
    for topic in ("joint_states", "arm_controller/joint_trajectory", "gripper_controller/commands",
                  "conveyor_controller/commands", "cameras/head/image_raw/compressed",
                  "cameras/wrist/image_raw/compressed", "task/state"):
        assert counts[f"{NS}/{topic}"] > 0, topic
    assert counts[f"{NS}/arm_controller/joint_trajectory"] >= 4  # to, and from, each parcel
    sim_log = (out / "logs" / "sim_robot.log").read_text()
    assert "rejected" not in sim_log and "outside the joint limits" not in sim_log, sim_log


def test_record_refuses_held_out_seeds_and_an_existing_recording(tmp_path: Path, capsys) -> None:
    assert run_cli(record, "record", "--episodes", "1", "--seed", str(EVAL_SEED_START), "--out", str(tmp_path)) == 2
    assert "held-out evaluation range" in capsys.readouterr().err
    (tmp_path / "episode_0000").mkdir()
    assert run_cli(record, "record", "--episodes", "1", "--out", str(tmp_path)) == 2
    assert "episode_0000 exists" in capsys.readouterr().err


@pytest.mark.parametrize("perturb", ["-1", "150", "nan"])
def test_record_refuses_a_perturbation_out_of_range(tmp_path: Path, capsys, perturb: str) -> None:
    assert run_cli(record, "record", "--episodes", "1", "--perturb-px", perturb, "--out", str(tmp_path / "b")) == 2
    assert "--perturb-px" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
