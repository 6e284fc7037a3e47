"""``internvla bench serve``: chunks/s and latency of the inference server under N robots, and what batching gains.

Usage examples::

    internvla bench serve --clients 4 --duration 30                  # own servers: batch 1, then batch 8
    internvla bench serve --clients 4 --max-batch-size 4 --json bench_serve.json
    internvla bench serve --clients 4 --rate-hz 5                    # each robot at 5 Hz, not back to back
    internvla bench serve --clients 8 --endpoint http://gpu-host:8000 --token-file token

Without --endpoint the bench starts `internvla serve` twice, one after the other, on a free local port:
with --max-batch-size 1, then with K (same model, backend, threads and batch wait), and reports the throughput
gain of batch K over batch 1. With --endpoint it measures that server alone (no gain).

Each robot is a process of its own (internvla_ros/serve/bench_client.py) sending what a policy node
with --config sends: every camera at the simulated cell's size, random but seeded pixels, a joint state
within the limits; back to back (the next request when the chunk arrives) unless --rate-hz. Counted:
chunks arriving within --duration after --warmup; latency is the client's round trip; the batch sizes
are the server's (GET /stats) over the same window. Last line: throughput_gain_over_batch1=<x>.

Exit codes: 0 measured, 1 a robot failed or got no chunk, 2 the bench could not run (server did not start).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from internvla_ros.cli.bench_model import bench_verbs
from internvla_ros.cli.groups import add_backend, add_verb
from internvla_ros.paths import config_path, default_model_dir
from internvla_ros.serve.bench_client import RobotPlan, RobotReport

EXIT_OK, EXIT_FAILED, EXIT_UNUSABLE = 0, 1, 2
SERVER_READY_TIMEOUT_S = 600.0
SERVER_START_ATTEMPTS = 2
REPORT_GRACE_S = 30.0  # after the window: the last requests in flight finish


class BenchError(Exception):
    """The bench could not measure (a server or a robot did not come up)."""


@dataclass(frozen=True)
class BenchPlan:
    clients: int
    duration_s: float
    warmup_s: float
    rate_hz: float
    config: Path
    model: Path
    seed: int = 0
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    threads: int = 1
    backend: str = "torch"
    token: str | None = None
    request_timeout_s: float = 60.0


def _get_json(endpoint: str, path: str, token: str | None) -> dict[str, Any]:
    request = urllib.request.Request(endpoint.rstrip("/") + path,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10.0) as response:
        return json.loads(response.read())


def _histogram_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    """Batches per size between two /stats snapshots."""
    old = before.get("batch_sizes", {})
    delta = {size: count - old.get(size, 0) for size, count in after.get("batch_sizes", {}).items()}
    return {size: count for size, count in sorted(delta.items(), key=lambda kv: int(kv[0])) if count > 0}


def measure(endpoint: str, plan: BenchPlan, max_batch_size: int | None) -> dict[str, Any]:
    """One run: the robots against ``endpoint``; chunks/s, latencies, the server's batch sizes."""
    import multiprocessing
    from threading import BrokenBarrierError

    from internvla_ros.serve.bench_client import run_robot
    from internvla_ros.serve.protocol import PATH_STATS

    context = multiprocessing.get_context("spawn")  # no forked copy of this process's threads
    ready = context.Barrier(plan.clients + 1)
    reports_queue = context.Queue()
    robots = [context.Process(target=run_robot, name=f"robot-{i}", daemon=True, args=(RobotPlan(
        index=i, endpoint=endpoint, config=str(plan.config), model=str(plan.model), seed=plan.seed * 1000 + i,
        rate_hz=plan.rate_hz, warmup_s=plan.warmup_s, duration_s=plan.duration_s, token=plan.token,
        request_timeout_s=plan.request_timeout_s), ready, reports_queue)) for i in range(plan.clients)]
    for robot in robots:
        robot.start()
    snapshots: list[dict[str, Any]] = []
    try:
        ready.wait(SERVER_READY_TIMEOUT_S)
        time.sleep(plan.warmup_s)
        snapshots.append(_get_json(endpoint, PATH_STATS, plan.token))
        time.sleep(plan.duration_s)
        snapshots.append(_get_json(endpoint, PATH_STATS, plan.token))
    except BrokenBarrierError:
        pass  # a robot could not start: its report says why
    reports = _collect(robots, reports_queue, plan)
    fatal = [f"robot {r.index}: {r.fatal.strip()}" for r in reports if r.fatal]
    if fatal:
        raise BenchError("; ".join(fatal))
    latency = [ms for r in reports for ms in r.latency_ms]
    chunks = sum(r.chunks for r in reports)
    histogram = _histogram_delta(*snapshots) if len(snapshots) == 2 else {}
    batches = sum(histogram.values())
    return {
        "max_batch_size": max_batch_size, "endpoint": endpoint, "clients": plan.clients,
        "duration_s": plan.duration_s, "chunks": chunks, "chunks_per_s": round(chunks / plan.duration_s, 3),
        "latency_ms_p50": round(float(np.percentile(latency, 50)), 2) if latency else None,
        "latency_ms_p99": round(float(np.percentile(latency, 99)), 2) if latency else None,
        "batch_sizes": histogram,
        "batch_size_mean": round(sum(int(k) * v for k, v in histogram.items()) / batches, 2) if batches else None,
        "errors": sum(len(r.errors) for r in reports),
        "first_error": next((e for r in reports for e in r.errors), ""),
        "per_client": [{"client": r.index, "chunks": r.chunks, "chunks_per_s": round(r.chunks / plan.duration_s, 3),
                        "latency_ms_p50": r.percentile(50), "latency_ms_p99": r.percentile(99),
                        "requests": r.requests, "errors": len(r.errors)} for r in reports],
        "server": {k: v for k, v in (snapshots[-1] if snapshots else {}).items() if k.endswith(("_p50", "_p99"))},
    }


def _collect(robots: list[Any], reports_queue: Any, plan: BenchPlan) -> list[RobotReport]:
    import queue

    reports: dict[int, RobotReport] = {}
    deadline = time.monotonic() + plan.request_timeout_s + REPORT_GRACE_S
    while len(reports) < len(robots) and time.monotonic() < deadline:
        try:
            report = reports_queue.get(timeout=1.0)
        except queue.Empty:
            if not any(r.is_alive() for r in robots):
                break
            continue
        reports[report.index] = report
    for index, robot in enumerate(robots):
        robot.join(5.0)
        if robot.is_alive():
            robot.terminate()
            robot.join()
        if index not in reports:
            reports[index] = RobotReport(index, fatal=f"sent no report (exit code {robot.exitcode})")
    return [reports[i] for i in sorted(reports)]


@contextmanager
def own_server(plan: BenchPlan, max_batch_size: int, log_dir: Path) -> Iterator[str]:
    """`internvla serve` on a free local port with ``max_batch_size``; its URL once it answers."""
    from internvla_ros.serve.process import ServerProcess, free_port

    args = ["--model", str(plan.model), "--max-batch-size", str(max_batch_size), "--batch-wait-ms",
            f"{plan.batch_wait_ms:g}", "--threads", str(plan.threads), "--backend", plan.backend]
    log_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, SERVER_START_ATTEMPTS + 1):
        server = ServerProcess(args, log_dir / f"serve_batch{max_batch_size}.log", free_port())
        try:
            server.wait_ready(SERVER_READY_TIMEOUT_S)
            break
        except RuntimeError as err:  # exited or never answered: a loaded machine can make Ray miss its deadline
            server.stop()
            if attempt == SERVER_START_ATTEMPTS:
                raise BenchError(str(err)) from err
            print(f"bench serve: the server did not start; trying again ({str(err).splitlines()[0]})",
                  file=sys.stderr, flush=True)
    try:
        yield server.url
    finally:
        server.stop()


def bench(plan: BenchPlan, endpoint: str | None, log_dir: Path) -> dict[str, Any]:
    """Every run (batch 1 then K on own servers, or the given endpoint) and the summary fields."""
    runs = []
    if endpoint is not None:
        runs.append(measure(endpoint, plan, None))
    else:
        for size in sorted({1, plan.max_batch_size}):
            print(f"bench serve: starting a server with --max-batch-size {size} ...", file=sys.stderr, flush=True)
            with own_server(plan, size, log_dir) as url:
                runs.append(measure(url, plan, size))
            _print_run(runs[-1], sys.stderr)
    last = runs[-1]
    baseline = runs[0]["chunks_per_s"] if endpoint is None else None
    gain = round(last["chunks_per_s"] / baseline, 3) if baseline else None
    return {
        **{k: last[k] for k in ("chunks_per_s", "latency_ms_p50", "latency_ms_p99", "batch_sizes",
                                "batch_size_mean", "chunks", "errors")},
        "chunks_per_s_batch1": baseline, "throughput_gain_over_batch1": gain,
        "clients": plan.clients, "duration_s": plan.duration_s, "warmup_s": plan.warmup_s, "rate_hz": plan.rate_hz,
        "max_batch_size": None if endpoint else plan.max_batch_size, "batch_wait_ms": plan.batch_wait_ms,
        "threads": plan.threads, "backend": plan.backend, "endpoint": endpoint, "model": str(plan.model),
        "config": str(plan.config),
        "cpu_count": os.cpu_count(), "runs": runs,
    }


def _print_run(run: dict[str, Any], stream: Any = None) -> None:
    stream = stream or sys.stdout  # looked up per call: a caller may have replaced it since import
    size = run["max_batch_size"] if run["max_batch_size"] is not None else "?"  # ?: a server of --endpoint
    print(f"max batch {size}: {run['chunks_per_s']:.2f} chunks/s ({run['chunks']} in {run['duration_s']:g} s), "
          f"latency p50 {run['latency_ms_p50']} ms, p99 {run['latency_ms_p99']} ms, batch sizes "
          f"{run['batch_sizes'] or '(none)'}, errors {run['errors']}", file=stream, flush=True)
    for client in run["per_client"]:
        print(f"  robot {client['client']}: {client['chunks']} chunks, {client['chunks_per_s']:.2f}/s, latency p50 "
              f"{client['latency_ms_p50']} ms, p99 {client['latency_ms_p99']} ms, errors {client['errors']}",
              file=stream, flush=True)


def _run(args: argparse.Namespace) -> int:
    checks = [(args.clients >= 1, "--clients must be >= 1"), (args.duration > 0, "--duration must be > 0"),
              (args.warmup >= 0, "--warmup must be >= 0"), (args.rate_hz >= 0, "--rate-hz must be >= 0"),
              (args.max_batch_size >= 1, "--max-batch-size must be >= 1")]
    for ok, message in checks:
        if not ok:
            print(f"ERROR: {message}", file=sys.stderr)
            return EXIT_UNUSABLE
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    plan = BenchPlan(clients=args.clients, duration_s=args.duration, warmup_s=args.warmup, rate_hz=args.rate_hz,
                     config=config_path(args.config).resolve(), model=Path(args.model or default_model_dir()).resolve(),
                     seed=args.seed, max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms,
                     threads=args.threads, backend=args.backend, token=token)
    if not (plan.model / "stats.json").is_file():
        print(f"ERROR: --model {plan.model}: no stats.json (a checkpoint directory is needed)", file=sys.stderr)
        return EXIT_UNUSABLE
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        try:
            summary = bench(plan, args.endpoint, Path(args.log_dir) if args.log_dir else Path(scratch))
        except BenchError as err:
            print(f"ERROR: {err}", file=sys.stderr)
            return EXIT_UNUSABLE
    for run in summary["runs"]:
        _print_run(run)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"throughput_gain_over_batch1={summary['throughput_gain_over_batch1']}")
    starved = [c["client"] for run in summary["runs"] for c in run["per_client"] if c["chunks"] == 0]
    return EXIT_FAILED if starved else EXIT_OK


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_verb(bench_verbs(subparsers), "serve", "inference server throughput and latency under N robots",
                      __doc__)
    parser.add_argument("--clients", type=int, default=4, help="simulated robots, one process each (default 4)")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds per run (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window opens (default 5)")
    parser.add_argument("--rate-hz", type=float, default=0.0, help="per robot (default 0: back to back)")
    parser.add_argument("--json", metavar="PATH", help="write the summary as JSON here")
    parser.add_argument("--endpoint", metavar="URL", help="measure this running server (no batch-1 comparison)")
    parser.add_argument("--token-file", metavar="FILE", help="bearer token for --endpoint")
    parser.add_argument("--model", metavar="DIR", help="checkpoint directory (default: models/default)")
    parser.add_argument("--config", default="dual_arm.yaml", help="robot config the robots send for (default "
                        "dual_arm.yaml: the default model's three cameras)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="K of the batched server (default 8)")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="the servers' batch wait (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch and ONNX Runtime threads of the servers' "
                        "replica; with onnxruntime also a batch's observations at once (default 1)")
    add_backend(parser, "the servers'")
    parser.add_argument("--seed", type=int, default=0, help="seed of the robots' observations (default 0)")
    parser.add_argument("--log-dir", metavar="DIR", help="keep the servers' logs here (default: a temporary dir)")
    parser.set_defaults(func=_run)
