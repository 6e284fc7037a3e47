"""The replay's summary (stdout and Markdown) and its plots (matplotlib, Agg: no display needed).

Plots: per controller, commanded (replay) vs golden vs measured (the bag's joint_states) position of each
joint; and the histogram of the measured inference wall time against the modelled latency.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from internvla_ros.replay.command_log import grid_between, sample, span
from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.pipeline import ReplayOutcome
from internvla_ros.runtime.config import NS_PER_S

REPORT_FILE = "report.md"
LATENCY_PLOT = "inference_latency.png"
HISTOGRAM_BINS = 30
FIGURE_WIDTH_IN = 10.0
ROW_HEIGHT_IN = 1.8
MS = 1_000_000


def _s(ns: int, origin: int) -> str:
    return f"{(ns - origin) / NS_PER_S:.3f} s"


def summary_lines(outcome: ReplayOutcome) -> list[str]:
    """The plain-text summary printed after every replay (also the head of the Markdown report)."""
    bag, stats, status = outcome.bag, outcome.stats, outcome.stats.final_status
    origin = bag.start_ns
    lines = [
        f"bag: {bag.path} ({bag.duration_ns / NS_PER_S:.3f} s, {bag.message_count} messages)",
        f"inputs: {outcome.topics.joint_states} [{stats.messages[outcome.topics.joint_states]}], "
        + ", ".join(f"{t} [{stats.messages[t]}]" for t in outcome.camera_topics.values()),
        f"replay: {outcome.wall_s:.2f} s wall for {bag.duration_ns / NS_PER_S:.3f} s of bag = "
        f"{outcome.speed:.2f}x real time (model load {outcome.model_load_s:.1f} s, "
        f"max RSS {outcome.maxrss_mib:.0f} MiB)",
        f"started at {_s(stats.started_ns, origin) if stats.started_ns is not None else 'never'}; "
        f"{stats.control_ticks} control ticks, {stats.commands_sent} commands, {stats.chunks} chunks, "
        f"{stats.status_reports} status reports",
    ]
    lines.append(_instruction_line(outcome))
    if outcome.policy:
        lines.append(f"policy: {outcome.policy}")
    if stats.wall_latency_ns:
        wall = np.asarray(stats.wall_latency_ns) / MS
        lines.append(f"inference wall time: median {np.median(wall):.1f} ms, max {wall.max():.1f} ms "
                     f"(modelled latency {outcome.request.inference_latency_ns / MS:g} ms schedules the chunks)")
    if outcome.batch > 1:
        lines.append(f"inference: {outcome.precomputed} of {len(stats.wall_latency_ns)} computed ahead in batches of "
                     f"{outcome.batch} by look-ahead threads, the others inline")
    for reason, count in stats.inference_failures.items():
        lines.append(f"WARNING: {count} inferences failed: {reason}")
    if stats.chunks_rejected:
        lines.append(f"chunks not executed: {dict(stats.chunks_rejected)}")
    for camera, count in stats.invalid_images.items():
        lines.append(f"WARNING: camera {camera}: {count} images rejected, first: {stats.image_errors[camera]}")
    for change in stats.size_changes:
        lines.append(f"WARNING: camera {change.camera} changed size {change.before} -> {change.after} at "
                     f"{_s(change.stamp_ns, origin)} (accepted: the model resizes every frame)")
    for start, end in stats.joint_gaps:
        lines.append(f"WARNING: no joint_states from {_s(start, origin)} to {_s(end, origin)} "
                     f"({(end - start) / MS:.0f} ms)")
    for start, end, state in stats.holds:
        lines.append(f"hold: {state} from {_s(start, origin)} to {_s(end, origin)}")
    if status is not None and (status.stale or status.rejected):
        lines.append(f"watchdog: stale events {dict(status.stale)}, rejected inputs {dict(status.rejected)}")
    lines.extend(f"note: {note}" for note in outcome.notes)
    if outcome.out is not None:
        lines.append(f"output: {outcome.out}")
    lines.extend(comparison_lines(outcome))
    return lines


def _instruction_line(outcome: ReplayOutcome) -> str:
    if outcome.request.instruction.strip():
        return f"instruction: {outcome.request.instruction.strip()!r} (--instruction)"
    applied = ", ".join(f"{text!r} at {_s(ns, outcome.bag.start_ns)}" for ns, text in outcome.stats.instructions)
    return f"instruction from {outcome.topics.instruction}: {applied or 'none applied'}"


def comparison_lines(outcome: ReplayOutcome) -> list[str]:
    comparison = outcome.comparison
    if comparison is None:
        return []
    lines = [f"golden: {outcome.request.golden}"]
    lines.append(f"{'joint':<22}{'controller':<24}{'max':>12}{'rms':>12}{'allowed max/rms':>20}  result")
    for d in comparison.joints:
        allowed = f"{d.allowed[0]:g}/{d.allowed[1]:g}"
        lines.append(f"{d.joint:<22}{d.controller:<24}{d.max_abs:>12.6f}{d.rms:>12.6f}{allowed:>20}  "
                     f"{'ok' if d.ok else 'OUT OF TOLERANCE'}")
    for t in comparison.timing:
        lines.append(f"timing {t.controller}: {t.replay_messages} vs {t.golden_messages} messages, nearest-stamp "
                     f"deviation max {t.max_abs_ms:.3f} ms, mean {t.mean_abs_ms:.3f} ms")
    if comparison.chunks_compared:
        lines.append(f"chunks: {comparison.matched_chunks} matched, {len(comparison.missing_chunks)} missing, "
                     f"{len(comparison.extra_chunks)} extra, "
                     f"arrival deviation max {comparison.chunk_timing_max_ms:.3f} ms")
    else:
        lines.append("chunks: the golden bag has no action_chunk topic; not compared")
    if comparison.ok:
        lines.append("RESULT: within tolerance")
    else:
        lines.append("RESULT: OUT OF TOLERANCE")
        lines.extend(f"  - {problem}" for problem in comparison.problems)
    return lines


def write_report(outcome: ReplayOutcome, directory: Path) -> Path:
    """report.md + one PNG per controller + the latency histogram, in ``directory`` (created)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        plots = [_plot_controller(outcome, c.name, directory) for c in outcome.config.controllers]
        plots.append(_plot_latency(outcome, directory))
        text = ["# Replay report", "", "```", *summary_lines(outcome), "```", ""]
        text += [f"![{p.stem}]({p.name})" for p in plots if p is not None]
        path = directory / REPORT_FILE
        path.write_text("\n".join(text) + "\n", encoding="utf-8")
    except OSError as err:
        msg = f"--report {directory}: cannot write the report: {err}"
        raise ReplayError(msg) from err
    return path


def _plot_controller(outcome: ReplayOutcome, controller: str, directory: Path) -> Path | None:
    config = outcome.config
    joints = next(c.joints for c in config.controllers if c.name == controller)
    replay = outcome.recorder.log
    comparison = outcome.comparison
    if comparison is not None and controller in comparison.replay_samples and comparison.grid_ns.size:
        grid = comparison.grid_ns
        ours, theirs = comparison.replay_samples[controller], comparison.golden_samples[controller]
    else:
        bounds = span(replay)
        if bounds is None:
            return None
        grid = grid_between(*bounds)
        ours, theirs = sample(replay, controller, grid, joints).positions, None
    origin = outcome.bag.start_ns
    figure, axes = plt.subplots(len(joints), 1, sharex=True, squeeze=False,
                                figsize=(FIGURE_WIDTH_IN, ROW_HEIGHT_IN * len(joints)))
    measured_t = (np.asarray(outcome.stats.measured_ns) - origin) / NS_PER_S
    measured = np.asarray(outcome.stats.measured) if outcome.stats.measured else None
    t = (grid - origin) / NS_PER_S
    for j, joint in enumerate(joints):
        axis = axes[j, 0]
        axis.plot(t, ours[:, j], label="commanded (replay)", linewidth=1.2)
        if theirs is not None:
            axis.plot(t, theirs[:, j], label="golden", linewidth=1.0, linestyle="--")
        if measured is not None:
            axis.plot(measured_t, measured[:, config.joint_index[joint]], label="measured (bag)", linewidth=0.8,
                      alpha=0.7)
        axis.set_ylabel(joint, fontsize=7)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=7)
    axes[-1, 0].set_xlabel("bag time [s]")
    figure.suptitle(controller)
    figure.tight_layout()
    path = directory / f"joints_{controller}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _plot_latency(outcome: ReplayOutcome, directory: Path) -> Path | None:
    wall = np.asarray(outcome.stats.wall_latency_ns) / MS
    if wall.size == 0:
        return None
    figure, axis = plt.subplots(figsize=(FIGURE_WIDTH_IN * 0.6, 3.5))
    axis.hist(wall, bins=HISTOGRAM_BINS)
    axis.axvline(outcome.request.inference_latency_ns / MS, color="red", linestyle="--", label="modelled latency")
    axis.set_xlabel("inference wall time [ms]")
    axis.set_ylabel("chunks")
    axis.legend()
    figure.tight_layout()
    path = directory / LATENCY_PLOT
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path
