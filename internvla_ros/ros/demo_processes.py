"""The demo's processes: the two nodes, optional CPU-burning stress processes, and their resident memory.

Stress processes are pure busy loops (no I/O, no memory): they take CPU time away from the nodes the
way other work on a robot computer does, so the demo shows whether the commands stay smooth when the
scheduler is contended.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from internvla_ros.serve.process import ServerProcess, free_port

BUSY_LOOP = "while True: pass"
SERVER_BATCH_WAIT_MS = 5.0  # one robot: a short wait, nobody else to batch with


def start_node(module: str, args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args], stdout=handle,
                                stderr=subprocess.STDOUT, env=env)


def stop_node(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGINT (the nodes shut down cleanly on it), then SIGKILL after timeout_s; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def start_stress(count: int) -> list[subprocess.Popen[bytes]]:
    """`count` busy-looping Python processes (-S: no site, so nothing is imported)."""
    if count < 0:
        raise ValueError(f"--stress must be 0 or more processes, got {count}")
    return [subprocess.Popen([sys.executable, "-S", "-c", BUSY_LOOP], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]


def stop_stress(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
    for process in processes:
        process.wait()


def rss_mb(pid: int) -> float | None:
    """Resident memory (VmRSS) of a live process in MB, None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def children(pid: int) -> list[int]:
    """Direct child processes of pid (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return sorted(set(found))


def largest_child(pid: int) -> int | None:
    """The child using the most memory: the policy node's inference worker."""
    sized = [(rss_mb(child) or 0.0, child) for child in children(pid)]
    return max(sized)[1] if sized else None


def start_server(model: Path, log: Path) -> ServerProcess:
    """`internvla serve` for the demo's model on a free loopback port (the node connects once it answers)."""
    return ServerProcess(["--model", str(model), "--batch-wait-ms", str(SERVER_BATCH_WAIT_MS)], log, free_port())


def remote_summary(server: ServerProcess, client: dict[str, str]) -> dict[str, Any]:
    """The round trip as the node measured it (its "inference server" diagnostics) and the server's record."""
    try:
        with urllib.request.urlopen(f"{server.url}/stats", timeout=5.0) as response:
            record = json.loads(response.read())
    except (OSError, ValueError) as err:
        record = {"error": f"no /stats: {err}"}

    def number(key: str) -> float | None:
        return float(client[key]) if client.get(key) not in (None, "") else None

    return {"endpoint": server.url, "round_trip_ms_p50": number("round_trip_ms_p50"),
            "round_trip_ms_p99": number("round_trip_ms_p99"),
            "server_inference_ms_p50": number("server_inference_ms_p50"),
            "server_queue_ms_p50": number("server_queue_ms_p50"), "requests": number("requests"),
            "failures": number("failures"), "server_record": record}
