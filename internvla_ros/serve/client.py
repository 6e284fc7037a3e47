"""The inference server as the runtime driver's policy process: the same interface as InferenceWorker.

    client = RemoteInference("http://127.0.0.1:8000", robot_type="franka")
    client.start(timeout_s=60)          # waits until the server answers /health; checks its /metadata
    result = client.infer(observation, timeout_s=5.0)   # InferenceTimeout / WorkerGone / InferenceError
    client.restart()                    # after a failure: reconnect once the server answers again
    client.close()

The driver handles its errors as it does the local worker's: a timeout (InferenceTimeout), a refused
or broken connection, or a server that is starting (WorkerGone) makes the robot hold with the controlled
stop while ``restart`` waits for the server to answer /health again; the motion then resumes. Standard
library HTTP only (no Ray in the node); one kept-alive connection, dropped after any failure so a late
reply can never be read as the answer to the next request. The round trip is measured here; the
server's queue and inference durations come back with each result and are reported beside it.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from internvla_ros.runtime.health import EndpointReport
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult
from internvla_ros.runtime.wire import (
    CONTENT_TYPE,
    FrameError,
    decode_result,
    encode_observation,
    frame_from_bytes,
    frame_parts,
)
from internvla_ros.runtime.worker import InferenceError, InferenceTimeout, WorkerGone
from internvla_ros.serve.protocol import PATH_HEALTH, PATH_INFER, PATH_METADATA

DEFAULT_STARTUP_TIMEOUT_S = 600.0
HEALTH_POLL_S = 0.25
PROBE_TIMEOUT_S = 2.0  # one /health or /metadata request
WINDOW = 200  # recent requests in the report's percentiles
GONE_STATUSES = (502, 503, 504)  # the server (or its replicas) not there to answer: wait for it


def parse_endpoint(endpoint: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path prefix) of ``http[s]://host[:port][/prefix]``; ValueError says what is wrong."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"inference endpoint '{endpoint}' is not an http://HOST:PORT URL (e.g. "
                         "http://127.0.0.1:8000, as `internvla serve` prints)")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname, port, parts.path.rstrip("/")


class RemoteInference:
    """One robot's connection to the inference server. ``infer`` is thread-safe (one request at a time)."""

    def __init__(self, endpoint: str, robot_type: str, token: str | None = None) -> None:
        self.endpoint = endpoint.strip().rstrip("/")
        self._scheme, self._host, self._port, self._prefix = parse_endpoint(endpoint)
        self.robot_type = robot_type
        self.client_id = uuid.uuid4().hex[:16]
        self._token = token
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._killed = threading.Event()
        self._startup_timeout_s = DEFAULT_STARTUP_TIMEOUT_S
        self.info: dict[str, Any] = {}
        self._round_trip_ns: deque[int] = deque(maxlen=WINDOW)
        self._queue_ns: deque[int] = deque(maxlen=WINDOW)
        self._inference_ns: deque[int] = deque(maxlen=WINDOW)
        self._batch_sizes: deque[int] = deque(maxlen=WINDOW)
        self._requests = self._failures = self._reconnects = 0
        self._reachable = False
        self._last_error = ""

    @property
    def pid(self) -> None:
        """No local process (InferenceWorker has one)."""
        return None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _new_connection(self, timeout_s: float | None) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=timeout_s)

    def _get(self, path: str) -> tuple[int, bytes]:
        """One GET on a connection of its own (probes never disturb the inference connection)."""
        connection = self._new_connection(PROBE_TIMEOUT_S)
        try:
            connection.request("GET", self._prefix + path, headers=self._headers())
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def start(self, timeout_s: float = DEFAULT_STARTUP_TIMEOUT_S,
              cancel: threading.Event | None = None) -> dict[str, Any]:
        """Waits until the server answers /health, then checks that its model knows this robot type.

        Raises InferenceError when the server does not answer within timeout_s, on ``cancel`` or kill(),
        or when it cannot serve this robot (unknown robot type, refused token)."""
        self._startup_timeout_s = timeout_s
        self._killed.clear()
        deadline = time.monotonic() + timeout_s
        last = "no answer yet"
        while True:
            try:
                status, body = self._get(PATH_HEALTH)
                if status == 200:
                    break
                last = f"/health answered {status}"
            except OSError as err:
                last = f"{type(err).__name__}: {err}"
            self._last_error = f"{self.endpoint} not answering: {last}"
            if (cancel is not None and cancel.is_set()) or self._killed.is_set():
                raise InferenceError(f"waiting for the inference server {self.endpoint} cancelled ({last})")
            if time.monotonic() >= deadline:
                raise InferenceError(f"the inference server {self.endpoint} did not answer within {timeout_s:g} s "
                                     f"({last}): is `internvla serve` running there?")
            time.sleep(HEALTH_POLL_S)
        try:
            status, body = self._get(PATH_METADATA)
        except OSError as err:
            raise WorkerGone(f"the inference server {self.endpoint} went away: {err}") from err
        if status != 200:
            raise InferenceError(f"the inference server {self.endpoint} refused /metadata ({status}): "
                                 f"{_reason(body)}")
        metadata = json.loads(body)
        if self.robot_type not in metadata.get("robot_types", {}):
            raise InferenceError(f"the inference server {self.endpoint} cannot serve robot type "
                                 f"'{self.robot_type}': its model ({metadata.get('model')}) knows "
                                 f"{sorted(metadata.get('robot_types', {}))}")
        self._reachable, self._last_error = True, ""
        self.info = {"endpoint": self.endpoint, **{k: metadata.get(k) for k in (
            "model", "model_hash", "backend", "policy", "chunk_size", "n_views", "noise_scale")}}
        return self.info

    def restart(self, cancel: threading.Event | None = None) -> dict[str, Any]:
        """Drops the connection and waits (up to the start-up timeout) until the server answers again."""
        self._drop()
        self._reconnects += 1
        return self.start(self._startup_timeout_s, cancel)

    def infer(self, observation: Observation, timeout_s: float | None = None) -> PolicyResult:
        """The server's result for one observation; errors as InferenceWorker.infer raises them."""
        header, arrays = encode_observation(observation)
        parts = frame_parts({**header, "robot_type": self.robot_type, "client": self.client_id}, arrays)
        headers = {**self._headers(), "Content-Type": CONTENT_TYPE,
                   "Content-Length": str(sum(len(p) if isinstance(p, bytes) else p.nbytes for p in parts))}
        with self._lock:
            self._requests += 1
            sent = time.monotonic_ns()
            try:
                status, body = self._post(parts, headers, timeout_s)
            except TimeoutError:
                self._fail(f"no reply from {self.endpoint} within {timeout_s:g} s", reachable=True)
                raise InferenceTimeout(self._last_error) from None
            except (OSError, http.client.HTTPException) as err:
                self._fail(f"{self.endpoint} unreachable: {type(err).__name__}: {err}", reachable=False)
                raise WorkerGone(self._last_error) from err
            round_trip = time.monotonic_ns() - sent
        if status in GONE_STATUSES:
            self._fail(f"{self.endpoint} not serving ({status}): {_reason(body)}", reachable=False)
            raise WorkerGone(self._last_error)
        if status != 200:
            self._failures += 1
            raise InferenceError(f"the inference server refused the request ({status}): {_reason(body)}")
        try:
            out_header, out_arrays = frame_from_bytes(body)
            result = decode_result(out_header, {k: np.array(v) for k, v in out_arrays.items()})
        except (FrameError, KeyError) as err:
            self._failures += 1
            raise InferenceError(f"the inference server sent a malformed reply: {err}") from err
        self._round_trip_ns.append(round_trip)
        self._queue_ns.append(int(out_header.get("queue_ns", 0)))
        self._inference_ns.append(int(out_header.get("inference_ns", 0)))
        self._batch_sizes.append(int(out_header.get("batch_size", 1)))
        self._reachable, self._last_error = True, ""
        timing = {**result.timing_ns, "round_trip": round_trip, "server_queue": int(out_header.get("queue_ns", 0)),
                  "server_inference": int(out_header.get("inference_ns", 0))}
        return PolicyResult(actions=result.actions, timing_ns=timing, preview=result.preview)

    def _post(self, parts: list[bytes | memoryview], headers: dict[str, str],
              timeout_s: float | None) -> tuple[int, bytes]:
        """One POST on the kept-alive connection; every byte waits at most until the deadline."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return left

        if self._connection is None:
            self._connection = self._new_connection(remaining())
        connection = self._connection
        try:
            connection.timeout = remaining()
            if connection.sock is not None:
                connection.sock.settimeout(connection.timeout)
            connection.request("POST", self._prefix + PATH_INFER, body=iter(parts), headers=headers)
            if connection.sock is not None:
                connection.sock.settimeout(remaining())
            response = connection.getresponse()
            body = response.read()
            remaining()
        except BaseException:
            self._drop()
            raise
        if response.will_close:
            self._drop()
        return response.status, body

    def _fail(self, message: str, reachable: bool) -> None:
        self._failures += 1
        self._reachable, self._last_error = reachable, message
        self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def kill(self) -> None:
        """Ends a start() that waits for the server, and drops the connection."""
        self._killed.set()
        self._drop()

    def close(self, timeout_s: float = 0.0) -> None:
        self.kill()

    def report(self) -> EndpointReport:
        """How the server is doing, as this client sees it (for the node's status and diagnostics)."""

        def ms(values: deque[int], q: float) -> float:
            return round(float(np.percentile(np.asarray(values), q)) / 1e6, 2) if values else 0.0

        return EndpointReport(
            endpoint=self.endpoint, reachable=self._reachable, last_error=self._last_error,
            requests=self._requests, failures=self._failures, reconnects=self._reconnects,
            round_trip_ms_p50=ms(self._round_trip_ns, 50), round_trip_ms_p99=ms(self._round_trip_ns, 99),
            server_inference_ms_p50=ms(self._inference_ns, 50), server_queue_ms_p50=ms(self._queue_ns, 50),
            batch_size_mean=round(float(np.mean(self._batch_sizes)), 2) if self._batch_sizes else 0.0)


def remote_inference(endpoint: str, robot_type: str, token_file: str = "") -> RemoteInference:
    """The client for the node's ``inference_endpoint`` and ``inference_token_file`` parameters; ValueError
    or ServeError names a parameter that cannot work."""
    from internvla_ros.serve.server import read_token

    return RemoteInference(endpoint, robot_type, read_token(Path(token_file)) if token_file else None)


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("error", body[:200]))
    except (ValueError, AttributeError):
        return body[:200].decode(errors="replace")
