"""The inference server: a Ray Serve application answering observations with action chunks, batched
across robots.

Start it with ``internvla serve --model models/default`` (a local Ray unless ``--address`` is given;
127.0.0.1:8000 by default; a host other than loopback needs ``--token-file``). Endpoints:

    POST /infer    body: one runtime/wire.py frame (the observation plus ``robot_type`` and ``client``,
                   serve/protocol.py); reply: the result frame plus ``queue_ns``, ``inference_ns``, ``batch_size``
    GET  /health   200 once a replica has loaded the model (needs no token); its pid and niceness
    GET  /metadata JSON: robot types, cameras, chunk size, backend, model hash, limits
    GET  /stats    JSON: requests, rejections by status, batch sizes seen, queue and inference durations

Requests reach ``PolicyServer`` replicas; serve/batcher.py gathers those arriving within the batch wait
(longer while another request's body is still being read) into one call of the policy's ``infer_batch``
(a loop over ``infer`` for a policy without it), run on a
thread so the replica keeps answering health checks and refusing bad requests meanwhile. A bad request
gets a 4xx with its reason and never reaches the policy; a policy error fails only its own request.
Durations are measured on the replica's monotonic clock; no absolute time leaves the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import inspect
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from internvla_ros.model.errors import ModelError
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult
from internvla_ros.runtime.policy_registry import load_policy_factory
from internvla_ros.runtime.wire import CONTENT_TYPE, FrameError, encode_result, frame_from_bytes, frame_to_bytes
from internvla_ros.serve.batcher import ArrivalBatcher
from internvla_ros.serve.errors import RequestRejected
from internvla_ros.serve.protocol import (
    PATH_HEALTH,
    PATH_INFER,
    PATH_METADATA,
    PATH_STATS,
    check_observation,
    check_token,
)

APP_NAME = "internvla"
STATS_WINDOW = 2000  # recent requests kept for the duration percentiles


@dataclass(frozen=True)
class ServeOptions:
    """What every replica is built with (plain values: Ray ships them to each replica)."""

    policy: str
    policy_kwargs: dict[str, Any]
    metadata: dict[str, Any]
    token: str | None
    max_batch_size: int
    batch_wait_s: float
    threads: int
    max_request_bytes: int


@dataclass
class Pending:
    observation: Observation
    client: str
    arrived_ns: int


@dataclass
class Outcome:
    result: PolicyResult | None
    error: str
    status: int
    queue_ns: int
    inference_ns: int
    batch_size: int


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class BatchRecord:
    """The server's record across all replicas: batch sizes, queue and inference durations, rejections."""

    def __init__(self) -> None:
        self.batch_sizes: Counter[int] = Counter()
        self.rejected: Counter[int] = Counter()
        self.requests = 0
        self.queue_ns: deque[int] = deque(maxlen=STATS_WINDOW)
        self.inference_ns: deque[int] = deque(maxlen=STATS_WINDOW)

    def batch(self, size: int, queue_ns: list[int], inference_ns: int) -> None:
        self.batch_sizes[size] += 1
        self.requests += size
        self.queue_ns.extend(queue_ns)
        self.inference_ns.extend([inference_ns] * size)

    def rejection(self, status: int) -> None:
        self.rejected[status] += 1

    def snapshot(self) -> dict[str, Any]:
        def ms(values: deque[int], q: float) -> float | None:
            return round(float(np.percentile(np.asarray(values), q)) / 1e6, 3) if values else None

        return {"requests": self.requests, "batches": sum(self.batch_sizes.values()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_size_seen": max(self.batch_sizes, default=0),
                "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
                "queue_ms_p50": ms(self.queue_ns, 50), "queue_ms_p99": ms(self.queue_ns, 99),
                "inference_ms_p50": ms(self.inference_ns, 50), "inference_ms_p99": ms(self.inference_ns, 99)}


def _batched_call(policy: Any) -> Callable[[list[Observation]], Any] | None:
    """The policy's ``infer_batch``, through its Cosmos latent cache where it has one: the t-15 frame of
    each robot was that robot's current frame a request ago, so a batch encodes only the new frames, each
    observation's on its own (batched convolutions were slower than one after another on a 2-core CPU)."""
    infer_batch = getattr(policy, "infer_batch", None)
    if infer_batch is not None and "cache_latents" in inspect.signature(infer_batch).parameters:
        return functools.partial(infer_batch, cache_latents=True)
    return infer_batch


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason, "status": status}, status_code=status)


@serve.deployment
class PolicyServer:
    """One replica: the policy, loaded once, behind the HTTP endpoints."""

    def __init__(self, options: ServeOptions, record: DeploymentHandle) -> None:
        try:
            import torch

            torch.set_num_threads(options.threads)
        except ImportError:
            pass
        self._options = options
        self._record = record
        self._policy = load_policy_factory(options.policy)(**options.policy_kwargs)
        info = dict(getattr(self._policy, "info", {}))
        self._metadata = {**options.metadata, "backend": str(info.get("backend", options.metadata["backend"])),
                          "policy_info": {k: str(v) for k, v in info.items()}}
        self._foresight_owner = ""  # the client whose foresight the policy has cached
        self._infer_batch = _batched_call(self._policy)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._batcher: ArrivalBatcher[Pending, Outcome] = ArrivalBatcher(self._run_batch, options.max_batch_size,
                                                                           options.batch_wait_s)

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        try:
            if path == PATH_HEALTH:
                return JSONResponse({"status": "ok", "pid": os.getpid(),
                                     "niceness": os.getpriority(os.PRIO_PROCESS, 0)})
            check_token(request.headers.get("authorization"), self._options.token)
            if path == PATH_INFER:
                if request.method != "POST":
                    raise RequestRejected(405, f"{PATH_INFER} takes POST with a frame body")
                return await self._infer(request)
            if request.method != "GET":
                raise RequestRejected(405, f"{path} takes GET")
            if path == PATH_METADATA:
                return JSONResponse(self._metadata)
            if path == PATH_STATS:
                return JSONResponse(await self._record.snapshot.remote())
            raise RequestRejected(404, f"no endpoint {path}: use {PATH_INFER}, {PATH_HEALTH}, {PATH_METADATA} "
                                       f"or {PATH_STATS}")
        except RequestRejected as err:
            self._later(self._record.rejection.remote(err.status))
            return _error(err.status, err.reason)

    async def _body(self, request: Request) -> bytes:
        limit = self._options.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise RequestRejected(413, f"body of {declared} bytes is over the server's limit of {limit} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise RequestRejected(413, f"body over the server's limit of {limit} bytes")
        return bytes(body)

    async def _infer(self, request: Request) -> Response:
        arrived = time.monotonic_ns()
        content_type = request.headers.get("content-type", CONTENT_TYPE)
        if content_type != CONTENT_TYPE:
            raise RequestRejected(415, f"content type {content_type!r}: send {CONTENT_TYPE!r}")
        with self._batcher.arriving():
            try:
                header, arrays = frame_from_bytes(await self._body(request))
            except FrameError as err:
                raise RequestRejected(400, f"malformed frame: {err}") from err
            _, client, observation = check_observation(header, arrays, self._metadata)
        outcome = await self._batcher.submit(Pending(observation, client, arrived))
        if outcome.result is None:
            raise RequestRejected(outcome.status, outcome.error)
        out_header, out_arrays = encode_result(outcome.result)
        out_header.update(queue_ns=outcome.queue_ns, inference_ns=outcome.inference_ns,
                          batch_size=outcome.batch_size)
        return Response(frame_to_bytes(out_header, out_arrays), media_type=CONTENT_TYPE)

    async def _run_batch(self, batch: list[Pending]) -> list[Outcome]:
        started = time.monotonic_ns()
        results = await asyncio.to_thread(self._run, batch)
        inference_ns = time.monotonic_ns() - started
        queue_ns = [started - item.arrived_ns for item in batch]
        self._later(self._record.batch.remote(len(batch), queue_ns, inference_ns))
        return [Outcome(result, error, status, queued, inference_ns, len(batch))
                for (result, error, status), queued in zip(results, queue_ns, strict=True)]

    def _own(self, item: Pending) -> Observation:
        """The observation with its cameras named per client, so the policy's frame cache never mixes
        robots, and foresight recomputed unless the cached one is this client's."""
        cameras = {f"{item.client}/{name}": frames for name, frames in item.observation.cameras.items()}
        recompute = item.observation.recompute_foresight or item.client != self._foresight_owner
        return dataclasses.replace(item.observation, cameras=cameras, recompute_foresight=recompute)

    def _run(self, batch: list[Pending]) -> list[tuple[PolicyResult | None, str, int]]:
        """Each request's (result, error, status); one request's failure never fails the others."""
        observations = [self._own(item) for item in batch]
        infer_batch = self._infer_batch
        if infer_batch is not None and len(batch) > 1:
            observations = [dataclasses.replace(o, recompute_foresight=True) for o in observations]
            try:
                results = list(infer_batch(observations))
                self._foresight_owner = ""
                return [(self._named(result, item), "", 200) for result, item in zip(results, batch, strict=True)]
            except Exception:  # find the request that failed: each alone below
                self._foresight_owner = ""
        outcomes = []
        for observation, item in zip(observations, batch, strict=True):
            try:
                result = self._policy.infer(observation)
            except Exception as err:  # one request's failure is its own: 4xx/5xx for it only
                status = 422 if isinstance(err, ModelError) else 500  # the model refusing its input
                outcomes.append((None, f"the policy failed on this observation: {type(err).__name__}: {err}", status))
                continue
            if observation.recompute_foresight:
                self._foresight_owner = item.client
            outcomes.append((self._named(result, item), "", 200))
        return outcomes

    @staticmethod
    def _named(result: PolicyResult, item: Pending) -> PolicyResult:
        prefix = f"{item.client}/"
        return dataclasses.replace(result, preview={name.removeprefix(prefix): image
                                                    for name, image in result.preview.items()})

    def _later(self, response: Any) -> None:
        """Awaits a record call in the background (the reply does not wait for the record)."""

        async def settle() -> None:
            with contextlib.suppress(Exception):  # a lost record entry must not fail a request
                await response

        task = asyncio.get_running_loop().create_task(settle())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def build_app(options: ServeOptions, replicas: int, replica_cpus: float, replica_gpus: float) -> Any:
    """The application for ``serve.run``: the replicas and the record they report to."""
    deployment = PolicyServer.options(
        num_replicas=replicas, max_ongoing_requests=max(4 * options.max_batch_size, 16),
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus})
    return deployment.bind(options, BatchRecord.bind())
