"""`internvla serve` as a child process (the demo's server, tests): start, wait until it answers, stop.

The server runs in a session of its own, so its local Ray (whose processes share the server's process
group) gets no signal meant for the parent's terminal; ``stop`` sends SIGINT to the server alone (it
shuts Serve and Ray down), ``kill`` ends the whole group at once, as a crash of the machine would.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

READY_POLL_S = 0.25


# Ports for a server we start. A port from bind(0) comes from the kernel's ephemeral range (32768-60999
# here), where Ray's processes also bind theirs (port 0) and which holds Ray's fixed dashboard-agent port
# 52365: bind(0) once returned 52365, Ray's agent took it while the server started, and Serve failed to
# bind. This range lies below the ephemeral range, above the worker ports of a `ray start` cluster
# (10002-19999), and clear of every fixed port Ray binds (6379, 8000, 8265, 9000, 52365); test_server
# checks that against Ray's own constants.
PORT_RANGE = (20000, 30000)


def free_port(host: str = "127.0.0.1") -> int:
    """A port in PORT_RANGE that is free now (tried in random order)."""
    for port in random.sample(range(*PORT_RANGE), 200):
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {PORT_RANGE[0]}-{PORT_RANGE[1] - 1} on {host} after 200 tries")


class ServerProcess:
    """One `internvla serve` process with its output in ``log``."""

    def __init__(self, args: list[str], log: Path, port: int, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None) -> None:
        self.args, self.log, self.port, self.host, self.env = args, log, port, host, env
        self.url = f"http://{host}:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        with self.log.open("ab") as handle:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "internvla_ros.cli.serve", "--host", self.host, "--port", str(self.port),
                 *self.args], stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True)

    def answers(self) -> bool:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=2.0)
        try:
            connection.request("GET", "/health")
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until /health answered; RuntimeError (with the log's end) if it exited or took too long."""
        started = time.monotonic()
        while not self.answers():
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() - started > timeout_s:
                why = f"exited with {self.process.returncode}" if self.process.poll() is not None else \
                    f"not ready within {timeout_s:g} s"
                raise RuntimeError(f"internvla serve {why}; its log ({self.log}) ends:\n{self.tail()}")
            time.sleep(READY_POLL_S)
        return time.monotonic() - started

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGINT (Serve and Ray shut down), then the whole group is killed after timeout_s."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._end_group()
        return int(process.returncode)

    def kill(self) -> None:
        """SIGKILL to the server and every process under it (its local Ray and Ray's workers, which run in
        process groups of their own), at once."""
        if self.process is not None:
            for pid in _descendants(self.process.pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            self._end_group()
            self.process.wait()

    def _end_group(self) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc/<pid>/task/*/children), children before their parents."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for child in children:
            found += [*_descendants(child), child]
    return found
