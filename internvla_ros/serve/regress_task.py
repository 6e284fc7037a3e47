"""One bag of ``internvla regress``: the replay as a Ray task runs it, and what it reports back.

The task holds 1 CPU and runs torch on 1 thread, so a machine's bags run side by side without
oversubscribing it, and float results do not depend on the thread count. A Ray worker process runs many
bags one after the other: it loads the model once (keyed by the checkpoint files' size and mtime) and
every replay resets the policy first, so the reuse changes no result. Everything a bag can do wrong is
returned as that bag's result, never raised.
"""

from __future__ import annotations

import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

PASS, OUT_OF_TOLERANCE, RECORDED = "pass", "OUT OF TOLERANCE", "recorded"
NO_GOLDEN, UNUSABLE, ERROR, CRASHED = "NO GOLDEN", "UNUSABLE", "ERROR", "CRASHED"
EXIT_OK, EXIT_OUT_OF_TOLERANCE, EXIT_UNUSABLE = 0, 1, 2  # as `internvla replay`
TASK_THREADS = 1


@dataclass(frozen=True)
class RegressSettings:
    """What every bag of a run shares (absolute paths, as every Ray node sees them)."""

    config: str
    model: str
    tolerance: str | None = None
    instruction: str = ""
    seed: int = 0
    noise_scale: float = 1.0  # the node's noise_scale


@dataclass(frozen=True)
class BagJob:
    name: str
    bag: str
    golden: str
    record: bool  # no golden yet: write the replay's output there


@dataclass
class BagResult:
    name: str
    bag: str
    golden: str | None
    status: str
    exit_code: int | None  # None: not replayed
    reason: str = ""
    worst_joint: str | None = None
    worst_error: float | None = None  # max |replay - golden| of the commanded position, joint units
    worst_allowed: float | None = None
    problems: list[str] = field(default_factory=list)
    time_s: float = 0.0  # the task's wall time, model load included
    replay_s: float = 0.0
    model_load_s: float = 0.0
    bag_s: float = 0.0
    chunks: int = 0
    host: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (PASS, RECORDED)


def crashed(job: BagJob, reason: str) -> BagResult:
    """The result of a task that never returned (its worker died)."""
    return BagResult(job.name, job.bag, None if job.record else job.golden, CRASHED, EXIT_UNUSABLE, reason=reason)


_POLICIES: dict[tuple, object] = {}


def _cached_policy(request: object, config: object) -> object:
    """The replay's model loader, loading once per worker process and model (one model kept)."""
    from internvla_ros.replay.pipeline import load_key, load_model

    key = load_key(request, config)  # type: ignore[arg-type]
    if key not in _POLICIES:
        _POLICIES.clear()
        _POLICIES[key] = load_model(request, config)  # type: ignore[arg-type]
    return _POLICIES[key]


def replay_bag(job: BagJob, settings: RegressSettings) -> BagResult:
    """Replays ``job.bag``; compares with its golden, or writes it (``job.record``)."""
    started = time.monotonic()
    result = BagResult(job.name, job.bag, job.golden, UNUSABLE, EXIT_UNUSABLE, host=socket.gethostname())
    try:
        import torch

        from internvla_ros.replay.errors import ReplayError
        from internvla_ros.replay.pipeline import ReplayRequest, run_replay

        torch.set_num_threads(TASK_THREADS)
        request = ReplayRequest(
            bag=Path(job.bag), config=Path(settings.config), model=Path(settings.model),
            out=Path(job.golden) if job.record else None, golden=None if job.record else Path(job.golden),
            tolerance=Path(settings.tolerance) if settings.tolerance else None, instruction=settings.instruction,
            seed=settings.seed, noise_scale=settings.noise_scale)
        try:
            outcome = run_replay(request, policy_loader=_cached_policy)
        except ReplayError as err:
            result.reason = str(err)
            return result
        result.replay_s, result.model_load_s = outcome.wall_s, outcome.model_load_s
        result.bag_s, result.chunks = outcome.bag.duration_ns / 1e9, outcome.stats.chunks
        comparison = outcome.comparison
        if comparison is None:
            result.status, result.exit_code = RECORDED, EXIT_OK
            return result
        judged = [d for d in comparison.joints if d.samples > 0]
        if judged:
            worst = max(judged, key=lambda d: d.max_abs)
            result.worst_joint, result.worst_error, result.worst_allowed = worst.joint, worst.max_abs, worst.allowed[0]
        result.problems = list(comparison.problems)
        if comparison.ok:
            result.status, result.exit_code = PASS, EXIT_OK
        else:
            result.status, result.exit_code = OUT_OF_TOLERANCE, EXIT_OUT_OF_TOLERANCE
        return result
    except Exception as err:  # a defect or a bag no reader check caught: this bag's failure, with where
        frame = traceback.extract_tb(err.__traceback__)[-1]
        result.status = ERROR
        result.reason = f"{type(err).__name__}: {err} (at {Path(frame.filename).name}:{frame.lineno})"
        return result
    finally:
        result.time_s = time.monotonic() - started
