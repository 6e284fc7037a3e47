"""Starting and stopping the inference server: Ray (local, or a cluster's), Serve's HTTP proxy, the app.

The settings are checked before Ray starts, so a bad model directory or a missing token is refused in
a second, not after a cluster came up: a host other than loopback is refused without a token.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from internvla_ros.serve.errors import ServeError
from internvla_ros.serve.protocol import MAX_REQUEST_BYTES, model_metadata

LOCAL_OBJECT_STORE_BYTES = 256 << 20  # requests and replies are small: no need for Ray's 30 % of memory
# Ray starts its workers 15 nicer than itself so that its own daemons keep the CPU. A replica is the
# server's work: 15 nicer, anything else on the machine (a robot's nodes, the bench's robots) preempts the
# model, and a batch-1 chunk on two loaded cores took 137 ms instead of 115. A local Ray starts them this
# much nicer than `internvla serve` (RAY_worker_niceness in the environment overrides it); a cluster's
# workers keep the cluster's setting.
LOCAL_WORKER_NICENESS = 0
LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ServerSettings:
    model: Path
    policy: str = "internvla"
    backend: str = "torch"
    dtype: str = "float32"
    tokenizer: str | None = None
    threads: int = 1
    replicas: int = 1
    max_batch_size: int = 8
    batch_wait_ms: float = 10.0
    host: str = "127.0.0.1"
    port: int = 8000
    address: str | None = None
    token_file: Path | None = None
    max_request_bytes: int = MAX_REQUEST_BYTES
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    noise_scale: float = 1.0  # the node's noise_scale, for every client


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        raise ServeError(f"cannot read the token file {path}: {err}") from err
    if not token or any(c.isspace() for c in token):
        raise ServeError(f"the token file {path} must hold one token (no spaces), e.g. from `openssl rand -hex 32`")
    return token


def check_settings(settings: ServerSettings) -> str | None:
    """The token (None on loopback without a token file); ServeError names a setting that cannot work."""
    checks = [(settings.replicas >= 1, f"--replicas must be >= 1, got {settings.replicas}"),
              (1 <= settings.max_batch_size <= 256, f"--max-batch-size must be 1-256, got {settings.max_batch_size}"),
              (0 <= settings.batch_wait_ms <= 1000, f"--batch-wait-ms must be 0-1000, got {settings.batch_wait_ms}"),
              (0 < settings.port < 65536, f"--port must be 1-65535, got {settings.port}"),
              (settings.max_request_bytes > 0, "--max-request-mb must be > 0"),
              ((settings.model / "stats.json").is_file(),
               f"no stats.json in {settings.model}: give --model a checkpoint directory (make setup writes "
               "models/default)")]
    for ok, message in checks:
        if not ok:
            raise ServeError(message)
    if settings.token_file is not None:
        return read_token(settings.token_file)
    if not is_loopback(settings.host):
        raise ServeError(f"--host {settings.host} is reachable from other machines: give --token-file with a "
                         "bearer token (clients send 'Authorization: Bearer <token>'), or bind 127.0.0.1")
    return None


def policy_kwargs(settings: ServerSettings) -> dict[str, Any]:
    """The policy factory's keyword arguments (the inference worker's convention; ``load_policy`` runs a
    batch's observations ``threads`` at once where the backend runs them one at a time)."""
    return {"model": str(settings.model), "tokenizer": settings.tokenizer, "dtype": settings.dtype,
            "backend": settings.backend, "threads": settings.threads, "noise_scale": settings.noise_scale}


def _stop_on_signals(stop: threading.Event) -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())


def serve_until_stopped(settings: ServerSettings, ready: Callable[[str], None] = print) -> int:
    """Starts Ray and the app, calls ``ready`` with the URL, serves until SIGINT/SIGTERM, then shuts down."""
    token = check_settings(settings)
    metadata = model_metadata(settings.model, settings.policy, settings.backend, settings.max_request_bytes,
                              settings.noise_scale)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from internvla_ros.serve.app import APP_NAME, ServeOptions, build_app

    stop = threading.Event()
    _stop_on_signals(stop)  # from here on a signal ends the server cleanly
    if settings.address:
        ray.init(address=settings.address, logging_level="WARNING")
    else:
        os.environ.setdefault("RAY_worker_niceness", str(LOCAL_WORKER_NICENESS))  # inherited by the workers
        ray.init(include_dashboard=False, num_cpus=max(os.cpu_count() or 1, settings.replicas * settings.replica_cpus),
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, logging_level="WARNING")
    _stop_on_signals(stop)  # again: ray.init installs handlers of its own
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port},
                    logging_config={"log_level": "WARNING"})  # no line per request from the proxy
        options = ServeOptions(settings.policy, policy_kwargs(settings), metadata, token, settings.max_batch_size,
                               settings.batch_wait_ms / 1000.0, settings.threads, settings.max_request_bytes)
        serve.run(build_app(options, settings.replicas, settings.replica_cpus, settings.replica_gpus),
                  name=APP_NAME, route_prefix="/", logging_config={"log_level": "WARNING"})
        if not stop.is_set():
            ready(f"http://{settings.host}:{settings.port}")
        while not stop.wait(0.5):
            pass
    finally:
        if settings.address:
            serve.delete(APP_NAME)  # a shared cluster keeps running; only our application goes
        else:
            serve.shutdown()
        ray.shutdown()
    return 0
