"""Several `internvla eval` reports side by side: a table and a PNG of success rate against added delay.

Real-time chunking is judged by how a policy's success falls as the inference delay grows, per execution
mode (``--execution``, ``--added-latency-ms``), and by how smooth the executed motion stays. Each report is
one cell of that sweep. The success rate's 95 % interval (Wilson, over parcels) is the spread a re-run
could show, so two modes whose intervals overlap are not told apart by these runs.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the headless backend

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
    """One row per report, sorted by label then added delay."""
    rows = []
    for report in reports:
        low, high = wilson_interval(int(report["right"]), int(report["parcels"]))
        node = report.get("node", {})
        rows.append({"label": mode_label(report), "added_latency_ms": float(report.get("added_latency_ms") or 0.0),
                     "episodes": report["episodes"], "parcels": report["parcels"], "right": report["right"],
                     "success_rate": report["success_rate"], "ci95": (round(low, 3), round(high, 3)),
                     "grasps": report.get("grasps"), "closes": report.get("closes"),
                     "max_acceleration_ratio": report.get("max_acceleration_ratio"),
                     "mean_abs_jerk": report.get("mean_abs_jerk"),
                     "clamped_per_episode": round(node["commands_clamped"] / report["episodes"])
                     if "commands_clamped" in node and report["episodes"] else None,
                     "inference_p50_ms": round(node["inference_latency_p50_s"] * 1000)
                     if "inference_latency_p50_s" in node else None})
    return sorted(rows, key=lambda row: (row["label"], row["added_latency_ms"]))


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    header = ("| execution | added delay (ms) | right / parcels | success (95 % interval) | grasps / closes | "
              "max accel / limit | mean abs jerk (rad/s^3) | clamped per episode | inference p50 (ms) |")
    lines = [header, "|" + " --- |" * 9]
    for row in rows:
        low, high = row["ci95"]
        lines.append(f"| {row['label']} | {row['added_latency_ms']:g} | {row['right']} / {row['parcels']} | "
                     f"{row['success_rate']:.2f} ({low:.2f}-{high:.2f}) | {row['grasps']} / {row['closes']} | "
                     f"{_number(row['max_acceleration_ratio'], '.2f')} | {_number(row['mean_abs_jerk'], '.1f')} | "
                     f"{_number(row['clamped_per_episode'], ',')} | {_number(row['inference_p50_ms'], 'd')} |")
    return "\n".join(lines)


def _number(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def plot_success(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Success rate against added delay, one line per execution, the 95 % interval as error bars."""
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(row["label"] for row in rows):
        mine = [row for row in rows if row["label"] == label]
        delays = [row["added_latency_ms"] for row in mine]
        rates = [row["success_rate"] for row in mine]
        errors = [[rate - row["ci95"][0] for rate, row in zip(rates, mine, strict=True)],
                  [row["ci95"][1] - rate for rate, row in zip(rates, mine, strict=True)]]
        axes.errorbar(delays, rates, yerr=errors, marker="o", capsize=3, label=label)
    axes.set_xlabel("added inference delay (ms)")
    axes.set_ylabel("parcels sorted right")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
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
