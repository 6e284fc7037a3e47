"""The numbers of `internvla eval`: success rate, outcomes and throughput over the episodes' summaries.

Success rate is parcels sorted into the right bin over all parcels; parcels per minute is parcels
sorted right per minute of episode time (from each episode's start to its end: its last outcome or
its time limit). ``closes`` and ``grasps`` count the empty gripper closing, and closing around a parcel.
Smoothness, from the sim's judge of the executed arm motion: ``max_acceleration_ratio`` is the largest
over the episodes, ``mean_abs_jerk`` the mean of the episodes' means. ``switches``: how far each chunk the
policy node published disagreed with the one it replaced, at the hand-over (sim/chunk_switches.py): median,
90th percentile and largest velocity jump and position gap over every hand-over of every episode.
``limit_violations`` and ``acceleration_violations``: the judge's excursions over the whole run, homing
between episodes included; ``arrivals``: how late the stamped trajectories reached the controllers over the
whole run (the largest delay; the p50 and p99 of the last 20,000; how many arrived more than the judge's late
threshold after their stamp, after their own end, or after the judge had passed them), since a trajectory that
arrives late is joined late (sim/arrivals.py); ``homing``: how far the cell was from home before each episode and
how close when it started (ros/cell_homing.py), the largest over the episodes. ``by_lane``: parcels and parcels
sorted right in bands 25 mm wide across the belt (by each outcome's ``lane_offset_m``), since a policy
that fails mostly on one side of the belt fails for a reason a success rate hides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

from internvla_ros.sim.chunk_switches import switch_summary
from internvla_ros.sim.task import OUTCOMES

GRASP_COUNTS = ("closes", "grasps")
MOTION = ("max_acceleration_ratio", "mean_abs_jerk")
VIOLATIONS = ("limit_violations", "acceleration_violations")  # cumulative in each summary: the run's is the largest
ARRIVAL_COUNTS = ("late_trajectories", "trajectories_after_end", "judge_late_submissions")  # cumulative too
LANE_BAND_M = 0.025  # thirds of the default +-37.5 mm lane spread, centred on the belt's centre line


def _judged(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ratios = [float(s["max_acceleration_ratio"]) for s in summaries if s.get("max_acceleration_ratio") is not None]
    jerks = [float(s["mean_abs_jerk"]) for s in summaries if s.get("mean_abs_jerk") is not None]
    homings = [s["homing"] for s in summaries if s.get("homing")]
    return {**({"max_acceleration_ratio": max(ratios)} if ratios else {}),
            **({"arrivals": arrivals} if (arrivals := _arrivals(summaries)) else {}),
            **({"mean_abs_jerk": round(sum(jerks) / len(jerks), 4)} if jerks else {}),
            **{key: max(int(s[key]) for s in summaries) for key in VIOLATIONS if all(key in s for s in summaries)},
            **({"homing": {"from_distance_max": max(h["from_distance"] for h in homings),
                           "start_error_max": max(h["start_error"] for h in homings),
                           "duration_s_max": max(h["duration_s"] for h in homings)}} if homings else {})}


def _arrivals(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's trajectory arrivals, from the episodes' cumulative figures ({} when the sim gave none)."""
    if not summaries or not all(key in s for s in summaries for key in ARRIVAL_COUNTS):
        return {}
    delays = [s["trajectory_arrival_delay_ms_max"] for s in summaries if s.get("trajectory_arrival_delay_ms_max")
              is not None]
    last = summaries[-1]
    return {"delay_ms_max": max(delays) if delays else None,
            "delay_ms_p50": last.get("trajectory_arrival_delay_ms_p50"),
            "delay_ms_p99": last.get("trajectory_arrival_delay_ms_p99"),
            **{key: max(int(s[key]) for s in summaries) for key in ARRIVAL_COUNTS}}


def pooled_switches(summaries: Sequence[dict[str, Any]], *, samples: bool = False) -> dict[str, Any]:
    """The hand-overs' summary pooled over ``summaries`` (episodes, or eval reports: both carry
    ``switch_samples``; {} when none judged any); with ``samples``, every hand-over's figures too."""
    found = [s["switch_samples"] for s in summaries if s.get("switch_samples")]
    if not found:
        return {}
    pooled = {key: [value for sample in found for value in sample[key]] for key in ("position_gap", "velocity_jump")}
    return {"switches": switch_summary(pooled["position_gap"], pooled["velocity_jump"]),
            **({"switch_samples": pooled} if samples else {})}


def _lane_band(lane_offset_m: float) -> int:
    return math.floor(float(lane_offset_m) / LANE_BAND_M + 0.5)


def by_lane(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """{"-25 mm": {"parcels": n, "right": r, ...}, "0 mm": ..., "+25 mm": ...}: the band's centre, + toward
    the arm's base; only outcomes that carry ``lane_offset_m``. With the closes the sim logged: ``closes``
    and ``grasps`` next to a parcel of the band, and the tip's median offset from that parcel at a close
    (``close_dx_px``: + before the parcel reached the tip; ``close_dy_px``: + toward the arm's base), so a policy
    that closes late, early or beside one lane shows which."""
    bands: dict[int, dict[str, Any]] = {}
    offsets: dict[int, list[tuple[float, float]]] = {}

    def band(index: int) -> dict[str, Any]:
        return bands.setdefault(index, {"parcels": 0, "right": 0})

    for outcome in (o for s in summaries for o in s.get("outcomes", ()) if "lane_offset_m" in o):
        counts = band(_lane_band(outcome["lane_offset_m"]))
        counts["parcels"] += 1
        counts["right"] += outcome["outcome"] == "right"
    for close in (c for s in summaries for c in s.get("close_offsets", ()) if c.get("lane_offset_m") is not None):
        offsets.setdefault(index := _lane_band(close["lane_offset_m"]), []).append((close["dx_px"], close["dy_px"]))
        counts = band(index)
        counts["closes"] = counts.get("closes", 0) + 1
        counts["grasps"] = counts.get("grasps", 0) + bool(close["held"])
    for index, pairs in offsets.items():
        bands[index]["close_dx_px"] = round(median(x for x, _ in pairs), 1)
        bands[index]["close_dy_px"] = round(median(y for _, y in pairs), 1)
    return {f"{round(k * LANE_BAND_M * 1000):+d} mm".replace("+0 mm", "0 mm"): bands[k] for k in sorted(bands)}


def model_identity(model: Path) -> dict[str, Any]:
    """Which weights were evaluated, kept in the report: a model directory is often retrained in place."""
    from internvla_ros.learning.training_checkpoint import trained_steps
    from internvla_ros.model.config import load_config
    from internvla_ros.serve.protocol import model_hash

    return {"hash": model_hash(model), "train_step": trained_steps(model),
            "rtc_training_max_delay": load_config(model).rtc_training_max_delay}


def aggregate(summaries: Sequence[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """The eval report: ``meta`` (cell, policy, model, seeds...) then the totals and every episode; with the
    policy node, ``node``: its counters over all episodes (each episode's own in its ``node``)."""
    parcels = sum(int(s["parcels"]) for s in summaries)
    switches = pooled_switches(summaries, samples=True)
    samples = switches.pop("switch_samples", None)
    nodes = [s["node"] for s in summaries if s.get("node")]
    node = {key: sum(n[key] for n in nodes) for key in nodes[0] if key != "inference_latency_p50_s"} if nodes else {}
    if nodes:
        node["inference_latency_p50_s"] = float(median(n["inference_latency_p50_s"] for n in nodes))
    counts = {name: sum(int(s[name]) for s in summaries) for name in OUTCOMES}
    grasping = {name: sum(int(s.get(name, 0)) for s in summaries) for name in GRASP_COUNTS}
    minutes = sum(float(s["duration_s"]) for s in summaries) / 60.0
    return {
        **meta,
        "episodes": len(summaries),
        "parcels": parcels,
        **counts,
        "success_rate": round(counts["right"] / parcels, 4) if parcels else 0.0,
        "parcels_per_minute": round(counts["right"] / minutes, 3) if minutes > 0 else 0.0,
        "episode_time_s": round(minutes * 60.0, 3),
        **grasping,
        **({"by_lane": lanes} if (lanes := by_lane(summaries)) else {}),
        **_judged(summaries),
        **switches,
        **({"node": node} if node else {}),
        "per_episode": [{key: s[key] for key in ("episode", "seed", "variant", "instruction", "parcels",
                                                  *OUTCOMES, *GRASP_COUNTS, "close_distance_px_median", *MOTION,
                                                  "success_rate", "duration_s", "outcomes", "node", "homing")
                         if key in s} | pooled_switches([s])
                        for s in summaries],
        **({"switch_samples": samples} if samples else {}),
    }


def format_report(report: dict[str, Any]) -> str:
    """One line per episode and the totals, for the terminal."""
    lines = [f"episode {e['episode']} seed {e['seed']}: {e['right']}/{e['parcels']} right, {e['wrong']} wrong, "
             f"{e['dropped']} dropped, {e['missed']} missed in {e['duration_s']:.1f} s"
             + (f"; {e['grasps']} of {e['closes']} closes held a parcel (median distance "
                f"{e.get('close_distance_px_median')} px)" if "closes" in e else "")
             for e in report["per_episode"]]
    lines.append(f"success_rate={report['success_rate']:.3f} ({report['right']}/{report['parcels']} parcels, "
                 f"{report['episodes']} episodes), parcels_per_minute={report['parcels_per_minute']:.2f}, "
                 f"grasps {report.get('grasps', 0)} of {report.get('closes', 0)} closes"
                 + "".join(f", {key}={report[key]}" for key in (*MOTION, *VIOLATIONS) if key in report))
    if report.get("by_lane"):
        lines.append("right by lane (across the belt from its centre line, + toward the arm): " + ", ".join(
            f"{name} {band['right']}/{band['parcels']}" for name, band in report["by_lane"].items()))
        if any("closes" in band for band in report["by_lane"].values()):
            lines.append("closes by lane (grasps/closes; tip minus parcel, median px: x + early, y + toward the arm): "
                         + ", ".join(f"{name} {band.get('grasps', 0)}/{band['closes']} "
                                     f"({band['close_dx_px']:+.1f}, {band['close_dy_px']:+.1f})"
                                     for name, band in report["by_lane"].items() if "closes" in band))
    if report.get("arrivals"):
        arrivals = report["arrivals"]
        lines.append(f"trajectory arrival minus stamp: p50 {arrivals['delay_ms_p50']} ms, "
                     f"p99 {arrivals['delay_ms_p99']} ms, max {arrivals['delay_ms_max']} ms; "
                     f"{arrivals['late_trajectories']} late, {arrivals['trajectories_after_end']} after their end, "
                     f"{arrivals['judge_late_submissions']} after the judge had passed them")
    if report.get("homing"):
        homing = report["homing"]
        lines.append(f"homed before every episode: from up to {homing['from_distance_max']} to within "
                     f"{homing['start_error_max']} (rad or m) of home, at most {homing['duration_s_max']} s")
    if report.get("switches"):
        switches = report["switches"]
        lines.append(f"chunk hand-overs: {switches['switches']}, velocity jump p50 {switches['velocity_jump_p50']} "
                     f"p90 {switches['velocity_jump_p90']} max {switches['velocity_jump_max']} rad/s, position gap "
                     f"p50 {switches['position_gap_p50']} p90 {switches['position_gap_p90']} "
                     f"max {switches['position_gap_max']} rad")
    if report.get("node"):
        lines.append("policy node: " + ", ".join(f"{key}={value}" for key, value in report["node"].items()))
    return "\n".join(lines)
