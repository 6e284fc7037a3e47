"""Several `internvla eval` reports side by side: a table and a PNG of success rate against added delay. Real-time
chunking is judged by how a policy's success falls as the inference delay grows, per execution mode
(``--execution``, ``--added-latency-ms``), and by how smooth the executed motion stays. Each report is one cell of
that sweep; reports of the same cell (the sweep run again on other seeds) are pooled into one row. The hand-over
velocity jump is how far each new chunk's velocity differed from the one it replaced (eval's ``switches``); reports
from before it was judged show "-". The success rate's 95 % interval (Wilson, over parcels) is the spread a re-run
could show, so two modes whose intervals overlap are not told apart by these runs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from statistics import median
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

from internvla_ros.learning.eval import pooled_switches
from internvla_ros.model.config import load_config
from internvla_ros.model.errors import ModelError

Z_95 = 1.96


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (sensible at 0 and at n of n, unlike the normal one)."""
    if trials == 0:
        return 0.0, 1.0
    rate = successes / trials
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def mode_label(report: dict[str, Any]) -> str:
    """What ran: the execution mode (real-time chunking as the model runs it), the model (and its training
    step), the noise scale. The report's ``model_identity`` says what the weights were when evaluated; older
    reports fall back to the model directory's config as it is now."""
    mode = report.get("execution") or "config default"
    model = report.get("model")
    identity = report.get("model_identity") or {}
    if mode == "rtc" and model:
        trained = identity.get("rtc_training_max_delay")
        if trained is None:
            with contextlib.suppress(OSError, ValueError, ModelError):  # not on this machine: plain "rtc"
                trained = load_config(Path(model)).rtc_training_max_delay
        if trained is not None:
            mode = "rtc (training-time)" if trained > 0 else "rtc (guidance)"
    parts = [mode]
    if model:
        step = identity.get("train_step")
        parts.append(Path(model).name + (f" step {step}" if step is not None else ""))
    if report.get("noise_scale") is not None:
        parts.append(f"noise x{report['noise_scale']}")
    return ", ".join(parts)


def table_rows(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per execution and added delay, sorted by label then delay. Reports of the same cell (a sweep
    run again on other seeds) are pooled: their episodes and parcels add up, the interval narrows."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for report in reports:
        key = (mode_label(report), float(report.get("added_latency_ms") or 0.0))
        groups.setdefault(key, []).append(report)
    rows = [_row(label, delay, group) for (label, delay), group in groups.items()]
    return sorted(rows, key=lambda row: (row["label"], row["added_latency_ms"]))


def _row(label: str, delay: float, group: Sequence[dict[str, Any]]) -> dict[str, Any]:
    episodes = sum(int(r["episodes"]) for r in group)
    parcels, right = sum(int(r["parcels"]) for r in group), sum(int(r["right"]) for r in group)
    low, high = wilson_interval(right, parcels)
    ratios = [r["max_acceleration_ratio"] for r in group if r.get("max_acceleration_ratio") is not None]
    jerks = [(r["mean_abs_jerk"], int(r["episodes"])) for r in group if r.get("mean_abs_jerk") is not None]
    nodes = [r["node"] for r in group if "commands_clamped" in r.get("node", {})]
    p50s = [p50 for r in group for p50 in _episode_p50s(r)]
    switches = pooled_switches(group).get("switches", {})
    return {"label": label, "added_latency_ms": delay, "runs": len(group), "episodes": episodes,
            "parcels": parcels, "right": right, "success_rate": round(right / parcels, 4) if parcels else 0.0,
            "ci95": (round(low, 3), round(high, 3)),
            "grasps": _total(group, "grasps"), "closes": _total(group, "closes"),
            "max_acceleration_ratio": max(ratios) if ratios else None,
            "mean_abs_jerk": round(sum(j * n for j, n in jerks) / sum(n for _, n in jerks), 4) if jerks else None,
            "clamped_per_episode": round(sum(n["commands_clamped"] for n in nodes)
                                         / sum(int(r["episodes"]) for r in group if "node" in r)) if nodes else None,
            "inference_p50_ms": round(median(p50s) * 1000) if p50s else None,
            **{f"switch_velocity_jump_{pick}": switches.get(f"velocity_jump_{pick}") for pick in ("p50", "p90", "max")}}


def _episode_p50s(report: dict[str, Any]) -> list[float]:
    """The inference p50 of each episode (of the whole report when it lists no episode's)."""
    episodes = [e["node"]["inference_latency_p50_s"] for e in report.get("per_episode", ())
                if "inference_latency_p50_s" in e.get("node", {})]
    if episodes:
        return episodes
    node = report.get("node", {})
    return [node["inference_latency_p50_s"]] if "inference_latency_p50_s" in node else []


def _total(group: Sequence[dict[str, Any]], key: str) -> int | None:
    values = [int(r[key]) for r in group if r.get(key) is not None]
    return sum(values) if values else None


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = ("| execution | added delay (ms) | right / parcels | success (95 % interval) | grasps / closes | "
              "hand-over velocity jump p50 / p90 / max (rad/s) | max accel / limit | mean abs jerk (rad/s^3) | "
              "clamped per episode | inference p50 (ms) |")
    lines = [header, "|" + " --- |" * 10]
    for row in rows:
        low, high = row["ci95"]
        jumps = " / ".join(_number(row[f"switch_velocity_jump_{pick}"], ".2f") for pick in ("p50", "p90", "max"))
        lines.append(f"| {row['label']} | {row['added_latency_ms']:g} | {row['right']} / {row['parcels']} | "
                     f"{row['success_rate']:.2f} ({low:.2f}-{high:.2f}) | {row['grasps']} / {row['closes']} | "
                     f"{jumps} | "
                     f"{_number(row['max_acceleration_ratio'], '.2f')} | {_number(row['mean_abs_jerk'], '.1f')} | "
                     f"{_number(row['clamped_per_episode'], ',')} | {_number(row['inference_p50_ms'], 'd')} |")
    return "\n".join(lines)


def _number(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plot_success(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Success rate against added delay, one line per execution, the 95 % interval as error bars; beside it,
    when the reports judged chunk hand-overs, their median velocity jump (the bar up to the 90th percentile)."""
    jumps = any(row.get("switch_velocity_jump_p50") is not None for row in rows)
    figure, axes = plt.subplots(1, 2 if jumps else 1, figsize=(12 if jumps else 7, 4.5), squeeze=False)
    success, jump = axes[0][0], axes[0][-1]
    for label in dict.fromkeys(row["label"] for row in rows):
        mine = [row for row in rows if row["label"] == label]
        delays = [row["added_latency_ms"] for row in mine]
        rates = [row["success_rate"] for row in mine]
        errors = [[rate - row["ci95"][0] for rate, row in zip(rates, mine, strict=True)],
                  [row["ci95"][1] - rate for rate, row in zip(rates, mine, strict=True)]]
        success.errorbar(delays, rates, yerr=errors, marker="o", capsize=3, label=label)
        judged = [row for row in mine if row.get("switch_velocity_jump_p50") is not None]
        if jumps and judged:
            medians = [row["switch_velocity_jump_p50"] for row in judged]
            tops = [row["switch_velocity_jump_p90"] - median for row, median in zip(judged, medians, strict=True)]
            jump.errorbar([row["added_latency_ms"] for row in judged], medians, yerr=[[0.0] * len(tops), tops],
                          marker="o", capsize=3, label=label)
    success.set_xlabel("added inference delay (ms)")
    success.set_ylabel("parcels sorted right")
    success.set_ylim(-0.02, 1.02)
    success.grid(alpha=0.3)
    success.legend(fontsize=8)
    if jumps:
        jump.set_xlabel("added inference delay (ms)")
        jump.set_ylabel("velocity jump at chunk hand-overs (rad/s)\nmedian, bar to the 90th percentile")
        jump.set_yscale("log")
        jump.grid(alpha=0.3, which="both")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def load_reports(paths: Sequence[Path]) -> list[dict[str, Any]]:
    reports = []
    for path in paths:
        report = json.loads(Path(path).read_text())
        missing = [key for key in ("episodes", "parcels", "right", "success_rate") if key not in report]
        if missing:
            raise ValueError(f"{path}: not an `internvla eval --json` report (no {', '.join(missing)})")
        reports.append(report)
    return reports
