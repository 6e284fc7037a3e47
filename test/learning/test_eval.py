"""`internvla eval` end to end with the scripted expert over the real middleware, and its numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from internvla_ros.cli import eval as eval_cli
from internvla_ros.learning.eval import aggregate
from internvla_ros.paths import config_path
from internvla_ros.ros.episodes import agent_command
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.render import wrist_tip_at_from_yaml

CONFIG_DIR = config_path("conveyor_sorting.yaml").parent


def summary(episode: int, right: int, parcels: int, duration_s: float) -> dict:
    return {"episode": episode, "seed": 100 + episode, "variant": episode % 2, "instruction": "...",
            "parcels": parcels, "right": right, "wrong": 0, "dropped": 0, "missed": parcels - right,
            "success_rate": right / parcels, "duration_s": duration_s, "outcomes": []}


def test_success_rate_is_over_parcels_and_throughput_over_episode_time() -> None:
    report = aggregate([summary(0, 3, 3, 30.0), summary(1, 0, 1, 30.0)], policy="expert")
    assert (report["episodes"], report["parcels"], report["right"], report["missed"]) == (2, 4, 3, 1)
    assert report["success_rate"] == 0.75 and report["parcels_per_minute"] == 3.0
    assert [e["seed"] for e in report["per_episode"]] == [100, 101] and report["policy"] == "expert"
    assert (report["closes"], report["grasps"]) == (0, 0)  # summaries without the counts: none


def test_closes_and_grasps_are_summed_and_printed() -> None:
    from internvla_ros.learning.eval import format_report

    episodes = [summary(0, 1, 3, 30.0), summary(1, 0, 3, 30.0)]
    for episode, (closes, grasps, distance) in zip(episodes, ((4, 2, 12.5), (0, 0, None)), strict=True):
        episode.update(closes=closes, grasps=grasps, close_distance_px_median=distance)
    report = aggregate(episodes, policy="internvla")
    assert (report["closes"], report["grasps"]) == (4, 2)
    assert report["per_episode"][0]["close_distance_px_median"] == 12.5
    text = format_report(report)
    assert "2 of 4 closes held a parcel (median distance 12.5 px)" in text and "grasps 2 of 4 closes" in text
    assert "max_acceleration_ratio" not in report  # summaries without the judge's smoothness: none made up


def test_parcels_sorted_right_are_counted_in_25_mm_bands_across_the_belt() -> None:
    from internvla_ros.learning.eval import format_report

    def outcome(lane_offset_m: float, result: str) -> dict:
        return {"parcel": 0, "colour": "red", "outcome": result, "bin": None, "t_s": 1.0,
                "lane_offset_m": lane_offset_m}

    episodes = [summary(0, 2, 3, 30.0), summary(1, 1, 3, 30.0)]
    episodes[0]["outcomes"] = [outcome(-0.03, "right"), outcome(0.012, "right"), outcome(0.037, "missed")]
    episodes[1]["outcomes"] = [outcome(-0.0126, "dropped"), outcome(0.013, "right"),
                               {"parcel": 2, "colour": "blue", "outcome": "right", "bin": "left", "t_s": 2.0}]
    report = aggregate(episodes, policy="internvla")
    assert report["by_lane"] == {"-25 mm": {"parcels": 2, "right": 1}, "0 mm": {"parcels": 1, "right": 1},
                                 "+25 mm": {"parcels": 2, "right": 1}}
    assert "+ toward the arm): -25 mm 1/2, 0 mm 1/1, +25 mm 1/2" in format_report(report)
    assert "by_lane" not in aggregate([summary(0, 3, 3, 30.0)], policy="expert")  # outcomes without lanes
    # closes near a parcel join its band: counts and the tip's median offset from the parcel
    episodes[0]["close_offsets"] = [
        {"parcel": 1, "held": True, "dx_px": 2.0, "dy_px": -1.0, "lane_offset_m": 0.012},
        {"parcel": 2, "held": False, "dx_px": 30.0, "dy_px": 20.0, "lane_offset_m": 0.037},
        {"parcel": 2, "held": False, "dx_px": 10.0, "dy_px": 4.0, "lane_offset_m": 0.037}]
    episodes[1]["close_offsets"] = [{"parcel": 1, "held": True, "dx_px": -3.0, "dy_px": 1.0, "lane_offset_m": 0.013}]
    report = aggregate(episodes, policy="internvla")
    assert report["by_lane"]["+25 mm"] == {"parcels": 2, "right": 1, "closes": 3, "grasps": 1,
                                           "close_dx_px": 10.0, "close_dy_px": 4.0}
    assert report["by_lane"]["0 mm"] == {"parcels": 1, "right": 1, "closes": 1, "grasps": 1,
                                         "close_dx_px": 2.0, "close_dy_px": -1.0}
    assert report["by_lane"]["-25 mm"] == {"parcels": 2, "right": 1}
    assert "closes by lane (grasps/closes; tip minus parcel, median px: x + early, y + toward the arm): " \
           "0 mm 1/1 (+2.0, -1.0), +25 mm 1/3 (+10.0, +4.0)" in format_report(report)


def test_smoothness_is_the_worst_peak_and_the_mean_jerk_over_episodes() -> None:
    from internvla_ros.learning.eval import format_report

    episodes = [summary(0, 1, 3, 30.0), summary(1, 0, 3, 30.0), summary(2, 0, 3, 30.0)]
    for episode, (ratio, jerk) in zip(episodes, ((0.5, 2.0), (0.9, 4.0), (None, None)), strict=True):
        episode.update(max_acceleration_ratio=ratio, mean_abs_jerk=jerk)
    report = aggregate(episodes, policy="internvla")
    assert (report["max_acceleration_ratio"], report["mean_abs_jerk"]) == (0.9, 3.0)
    assert report["per_episode"][1]["mean_abs_jerk"] == 4.0
    assert "max_acceleration_ratio=0.9, mean_abs_jerk=3.0" in format_report(report)


def test_trajectory_arrivals_are_the_runs_largest_and_printed() -> None:
    """The sim's figures are cumulative since it started: the run's counts are the largest, its p50 and p99 the
    last episode's (over the most recent trajectories), its max the largest."""
    from internvla_ros.learning.eval import format_report

    episodes = [summary(0, 1, 3, 30.0), summary(1, 0, 3, 30.0)]
    episodes[0].update(trajectory_arrival_delay_ms_p50=2.0, trajectory_arrival_delay_ms_p99=30.0,
                       trajectory_arrival_delay_ms_max=140.5, late_trajectories=1, trajectories_after_end=0,
                       judge_late_submissions=0)
    episodes[1].update(trajectory_arrival_delay_ms_p50=2.5, trajectory_arrival_delay_ms_p99=12.0,
                       trajectory_arrival_delay_ms_max=60.0, late_trajectories=1, trajectories_after_end=0,
                       judge_late_submissions=2)
    report = aggregate(episodes, policy="internvla")
    assert report["arrivals"] == {"delay_ms_max": 140.5, "delay_ms_p50": 2.5, "delay_ms_p99": 12.0,
                                  "late_trajectories": 1, "trajectories_after_end": 0, "judge_late_submissions": 2}
    assert ("trajectory arrival minus stamp: p50 2.5 ms, p99 12.0 ms, max 140.5 ms; 1 late, 0 after their end, "
            "2 after the judge had passed them") in format_report(report)
    assert "arrivals" not in aggregate([summary(0, 1, 3, 30.0)])  # a sim that gave none


def test_hand_overs_are_pooled_over_episodes_with_each_episodes_own_summary() -> None:
    from internvla_ros.learning.eval import format_report

    episodes = [summary(0, 1, 3, 30.0), summary(1, 0, 3, 30.0), summary(2, 0, 3, 30.0)]
    episodes[0]["switch_samples"] = {"position_gap": [0.01, 0.05], "velocity_jump": [0.2, 3.0]}
    episodes[1]["switch_samples"] = {"position_gap": [0.02], "velocity_jump": [0.4]}
    report = aggregate(episodes, policy="internvla")
    assert report["switches"] == {"switches": 3, "velocity_jump_p50": 0.4, "velocity_jump_p90": 2.48,
                                  "velocity_jump_max": 3.0, "position_gap_p50": 0.02, "position_gap_p90": 0.044,
                                  "position_gap_max": 0.05}
    assert report["per_episode"][0]["switches"]["velocity_jump_p50"] == 1.6
    assert "switches" not in report["per_episode"][2] and "switch_samples" not in report["per_episode"][0]
    assert report["switch_samples"]["velocity_jump"] == [0.2, 3.0, 0.4] and list(report)[-1] == "switch_samples"
    assert "chunk hand-overs: 3, velocity jump p50 0.4 p90 2.48 max 3.0 rad/s" in format_report(report)
    assert "switches" not in aggregate([summary(0, 3, 3, 30.0)], policy="expert")


def test_node_counters_are_summed_over_episodes_and_the_latency_is_their_median() -> None:
    node = {"chunks_computed": 10, "chunks_dropped": 2, "stale_inputs": 1, "inference_overruns": 0,
            "commands_clamped": 5, "inference_failures": 0, "inference_timeouts": 0}
    episodes = [summary(0, 3, 3, 30.0), summary(1, 1, 3, 30.0), summary(2, 0, 3, 30.0)]
    for episode, latency in zip(episodes, (0.5, 0.9, 0.7), strict=True):
        episode["node"] = {**node, "inference_latency_p50_s": latency}
    report = aggregate(episodes, policy="internvla")
    assert report["node"]["chunks_computed"] == 30 and report["node"]["chunks_dropped"] == 6
    assert report["node"]["inference_latency_p50_s"] == 0.7
    assert report["per_episode"][1]["node"]["inference_latency_p50_s"] == 0.9
    assert "node" not in aggregate([summary(0, 3, 3, 30.0)], policy="expert")


def test_node_counters_of_an_episode_are_the_change_between_two_status_messages() -> None:
    from internvla_ros.msg import PolicyStatus
    from internvla_ros.ros.episodes import counters_during, node_counters

    before, after = PolicyStatus(), PolicyStatus()
    before.chunks_computed, after.chunks_computed = 7, 19
    before.stale_inputs, after.stale_inputs = 3, 4
    after.inference_latency_p50 = 0.61234
    during = counters_during(node_counters(before), node_counters(after))
    assert (during["chunks_computed"], during["stale_inputs"], during["chunks_dropped"]) == (12, 1, 0)
    assert during["inference_latency_p50_s"] == 0.6123
    assert counters_during({}, node_counters(after)) == {} and node_counters(None) == {}


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
    # the expert closes the gripper right on the parcel: every right parcel was a grasp at a few px
    assert report["grasps"] >= report["right"] and report["closes"] >= report["grasps"]
    assert all(e["close_distance_px_median"] < 10 for e in report["per_episode"] if e["grasps"]), report
    # the sim judged the arm's motion: the expert's trajectories stay within 70 % of the limits, and move
    assert all(0.05 < e["max_acceleration_ratio"] <= 1.0 and e["mean_abs_jerk"] > 0 for e in report["per_episode"])
    assert f"success_rate={report['success_rate']:.3f}" in capsys.readouterr().out
    # every episode started home; the expert ended the first at its ready pose, away from home
    homings = [e["homing"] for e in report["per_episode"]]
    assert all(h["start_error"] <= 1e-3 for h in homings) and homings[1]["from_distance"] > 0.05, homings
    assert (report["limit_violations"], report["acceleration_violations"]) == (0, 0)
    # the view the episodes were run with: a policy is evaluated with the wrist camera it was trained on
    assert report["wrist_tip_at"] == wrist_tip_at_from_yaml(config_path("conveyor_sorting.yaml"))


def test_eval_of_the_policy_node_brings_the_cell_home_before_every_episode(tmp_path: Path) -> None:
    """The untrained default model leaves the arm wherever its first episode ends; the second starts home
    all the same, the node paused and silenced while the runner moves the cell, and running again after."""
    path, logs = tmp_path / "eval.json", tmp_path / "logs"
    assert run_eval("--episodes", "2", "--parcels", "1", "--json", str(path), "--logs", str(logs)) == 0
    report = json.loads(path.read_text())
    homings = [e["homing"] for e in report["per_episode"]]
    assert homings[1]["from_distance"] > 0.05, homings  # the policy had moved the arm away
    assert all(h["start_error"] <= 1e-3 for h in homings), homings
    joints = RuntimeConfig.from_yaml(CONFIG_DIR / "conveyor_sorting.yaml").joint_names
    assert set(homings[1]["start_pose"]) == set(joints)
    assert (report["limit_violations"], report["acceleration_violations"]) == (0, 0)
    assert report["arrivals"]["delay_ms_max"] is not None and report["arrivals"]["trajectories_after_end"] == 0
    assert all(e["node"]["chunks_computed"] > 0 for e in report["per_episode"])  # it ran in both episodes
    log = (logs / "policy_node.log").read_text()
    assert log.count("pause requested") == 2 and log.count("resume requested") == 2, log[-2000:]


def run_eval(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["eval", *argv])
    return args.func(args)


@pytest.mark.parametrize(("argv", "reason"), [
    (("--execution", "teleport"), "--execution teleport: use one of delay_compensated, uncompensated, reference, rtc"),
    (("--added-latency-ms", "-5"), "--added-latency-ms -5.0: use 0 to 5000"),
    (("--added-latency-ms", "nan"), "--added-latency-ms nan: use 0 to 5000"),
    (("--policy", "expert", "--noise-scale", "0"), "apply to --policy internvla, not expert"),
    (("--policy", "expert", "--execution", "rtc"), "apply to --policy internvla, not expert"),
    (("--backend", "tensorflow"), "--backend tensorflow: use one of torch, torch-uncached, onnxruntime, tensorrt"),
    (("--policy", "random", "--backend", "onnxruntime"), "apply to --policy internvla, not random"),
])
def test_execution_settings_are_checked_before_anything_starts(tmp_path: Path, capsys, argv: tuple[str, ...],
                                                                reason: str) -> None:
    assert run_eval(*argv, "--logs", str(tmp_path / "logs")) == 2
    assert reason in capsys.readouterr().err
    assert not (tmp_path / "logs").exists(), "no node was started"


def test_execution_settings_reach_the_policy_node_command_line(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    parser = argparse.ArgumentParser()
    eval_cli.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["eval", "--execution", "rtc", "--added-latency-ms", "200", "--noise-scale", "0"])
    overrides = eval_cli.policy_overrides(args)
    assert overrides == ["execution.mode:=rtc", "added_latency_ms:=200.0", "noise_scale:=0.0"]
    module, argv = agent_command("internvla", CONFIG_DIR / "conveyor_sorting.yaml", tmp_path, 0, overrides)
    assert module == "internvla_ros.ros.policy_node"
    assert argv[-6:] == ["-p", "execution.mode:=rtc", "-p", "added_latency_ms:=200.0", "-p", "noise_scale:=0.0"]
    with pytest.raises(ValueError, match="--policy expert takes no policy node parameters"):
        agent_command("expert", CONFIG_DIR / "conveyor_sorting.yaml", None, 0, overrides)


def test_the_experts_perturbation_reaches_its_node_and_only_the_expert_takes_one() -> None:
    module, argv = agent_command("expert", CONFIG_DIR / "conveyor_sorting.yaml", None, 7, [], perturb_px=30)
    assert module == "internvla_ros.ros.expert_node"
    assert argv[-8:] == ["-p", "seed:=7", "-p", "perturb_px:=30.0", "-p", "stop_belt:=false",
                         "-p", "aim:=lane"]
    with pytest.raises(ValueError, match="--perturb-px is for the scripted expert"):
        agent_command("random", CONFIG_DIR / "conveyor_sorting.yaml", None, 0, [], perturb_px=30)


def test_the_belt_stopping_option_reaches_the_expert_node_and_only_the_expert_takes_it() -> None:
    module, argv = agent_command("expert", CONFIG_DIR / "conveyor_sorting.yaml", None, 7, [], stop_belt=True)
    assert module == "internvla_ros.ros.expert_node" and argv[-4:-2] == ["-p", "stop_belt:=true"]
    with pytest.raises(ValueError, match="--stop-belt is for the scripted expert"):
        agent_command("random", CONFIG_DIR / "conveyor_sorting.yaml", None, 0, [], stop_belt=True)


def test_the_aim_option_reaches_the_expert_node_and_only_the_expert_takes_it() -> None:
    module, argv = agent_command("expert", CONFIG_DIR / "conveyor_sorting.yaml", None, 7, [], aim="near-half")
    assert module == "internvla_ros.ros.expert_node" and argv[-2:] == ["-p", "aim:=near-half"]
    with pytest.raises(ValueError, match="--aim is for the scripted expert"):
        agent_command("random", CONFIG_DIR / "conveyor_sorting.yaml", None, 0, [], aim="centre-line")
