"""`internvla serve` on a real local Ray Serve, one server for the module (the sine policy, a bearer token):
a runtime driver closing the loop through it over loopback, batching across concurrent clients, every bad
request answered with its 4xx while the server keeps serving, `internvla bench serve` against it, and a
policy node whose server is killed and started again (the robot stops within its limits, then resumes),
judged as test/ros/test_controlled_stops.py judges every other stop.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.cli.main import main
from internvla_ros.runtime.driver import SteadyClock
from internvla_ros.runtime.observation import CameraFrames, Observation
from internvla_ros.runtime.status import RuntimeState
from internvla_ros.runtime.test_policies import SinePolicy
from internvla_ros.runtime.wire import CONTENT_TYPE, encode_observation, frame_to_bytes
from internvla_ros.runtime.worker import InferenceError
from internvla_ros.serve.client import RemoteInference
from internvla_ros.serve.process import ServerProcess, free_port

from ..runtime.harness import ACTION_DIM, INSTRUCTION, JOINTS, ROBOT_TYPE, make_runtime
from ..runtime.test_driver import Feeder, Run, within_limits

pytestmark = [pytest.mark.slow]

TOKEN = "s3cret-token-for-the-test"
READY_S = 240.0  # a local Ray and the replica took 55 s on two loaded cores
WAIT_S = 60.0
MAX_REQUEST_MB = 4.0  # above a conveyor observation (2.3 MB), which the bench sends
BATCH_WAIT_MS = 50
CLIENTS, REQUESTS = 6, 5
BENCH_CLIENTS, MAX_BATCH_SIZE = 2, 8


def write_stats(directory: Path, robot_types: dict[str, int]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    entry = lambda dim: {"mean": [0.0] * dim, "std": [1.0] * dim}  # noqa: E731
    (directory / "stats.json").write_text(json.dumps({name: {"observation.state": entry(dim), "action": entry(dim)}
                                                      for name, dim in robot_types.items()}))
    return directory


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from ..ros.test_controlled_stops import CONFIG

    tmp = tmp_path_factory.mktemp("serve")
    model = write_stats(tmp / "model", {ROBOT_TYPE: len(JOINTS), CONFIG.robot_type: CONFIG.dim})
    (tmp / "token").write_text(TOKEN + "\n")
    process = ServerProcess(["--model", str(model), "--policy", "test_sine", "--token-file", str(tmp / "token"),
                             "--max-batch-size", str(MAX_BATCH_SIZE), "--batch-wait-ms", str(BATCH_WAIT_MS),
                             "--max-request-mb", str(MAX_REQUEST_MB), "--noise-scale", "0.5"], tmp / "server.log",
                            free_port())
    try:
        print(f"server ready after {process.wait_ready(READY_S):.1f} s")
        yield process
    finally:
        assert process.stop() == 0, process.tail()


def observation(stamp_ns: int, dim: int = len(JOINTS), image: np.ndarray | None = None) -> Observation:
    image = np.zeros((16, 12, 3), np.uint8) if image is None else image
    cameras = {"head": CameraFrames(0, image, stamp_ns, image, stamp_ns - 1)}
    return Observation(stamp_ns=stamp_ns, request_ns=stamp_ns, cameras=cameras, state=np.zeros(dim),
                       normalized_state=np.zeros(ACTION_DIM), instruction=INSTRUCTION, recompute_foresight=True,
                       decode_preview=False)


def request(server: ServerProcess, method: str, path: str, body: bytes = b"", token: str | None = TOKEN,
            content_type: str = CONTENT_TYPE) -> tuple[int, dict]:
    connection = http.client.HTTPConnection(server.host, server.port, timeout=WAIT_S)
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {token}"} if token else {})
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data.startswith(b"{") else {"frame": len(data)}
    finally:
        connection.close()


def body(obs: Observation, **changes: object) -> bytes:
    header, arrays = encode_observation(obs)
    header.update(robot_type=ROBOT_TYPE, client="raw-test")
    header.update({k: v for k, v in changes.items() if not k.startswith("array_")})
    arrays.update({k.removeprefix("array_"): v for k, v in changes.items() if k.startswith("array_")})
    return frame_to_bytes(header, arrays)


def test_server_ports_avoid_every_port_ray_binds_by_default() -> None:
    """A port Ray binds on its own, taken by our server first, fails Ray's start (its dashboard agent's
    52365 once did); Ray's fixed ports and the ephemeral range it binds from stay outside ours."""
    from ray._private import ray_constants
    from ray.serve._private import constants as serve_constants

    from internvla_ros.serve.process import PORT_RANGE

    fixed = {ray_constants.DEFAULT_PORT, ray_constants.DEFAULT_DASHBOARD_PORT,
             ray_constants.DEFAULT_DASHBOARD_AGENT_LISTEN_PORT, serve_constants.DEFAULT_HTTP_PORT,
             serve_constants.DEFAULT_GRPC_PORT}
    assert not [port for port in fixed if PORT_RANGE[0] <= port < PORT_RANGE[1]]
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert PORT_RANGE[1] <= ephemeral_low
    assert PORT_RANGE[0] <= free_port() < PORT_RANGE[1]


def test_a_driver_closes_the_loop_through_the_server(server: ServerProcess, tmp_path: Path) -> None:
    client = RemoteInference(server.url, ROBOT_TYPE, TOKEN)
    info = client.start(WAIT_S)
    assert info["policy"] == "test_sine" and len(info["model_hash"]) == 64
    assert info["noise_scale"] == 0.5  # what the node compares its own noise_scale with
    events = []
    clock = SteadyClock()
    run = Run(make_runtime(tmp_path), client, clock, events.append, inference_timeout_s=WAIT_S)
    with Feeder(run.runtime, clock):
        run.driver.start()
        try:
            run.wait(lambda: run.status().chunks_accepted >= 5, "five chunks executed")
        finally:
            run.driver.stop()
    assert within_limits(run) and run.driver.inference_timeouts == 0 and run.driver.worker_restarts == 0
    assert RuntimeState.RUNNING.value in [o.state for o in run.outputs]
    timing = events[-1].result.timing_ns
    assert timing["round_trip"] > timing["server_inference"] > 0 and timing["server_queue"] >= 0
    report = client.report()
    assert report.reachable and report.failures == 0 and report.requests >= 5
    print(f"round trip p50 {report.round_trip_ms_p50} ms, p99 {report.round_trip_ms_p99} ms; server inference "
          f"p50 {report.server_inference_ms_p50} ms, queue p50 {report.server_queue_ms_p50} ms")
    client.close()


def test_concurrent_clients_are_batched_and_each_gets_its_own_chunk(server: ServerProcess) -> None:
    before = request(server, "GET", "/stats")[1]
    clients = [RemoteInference(server.url, ROBOT_TYPE, TOKEN) for _ in range(CLIENTS)]
    for client in clients:
        client.start(WAIT_S)
    barrier = threading.Barrier(CLIENTS)
    results: dict[int, list[tuple[int, np.ndarray]]] = {k: [] for k in range(CLIENTS)}

    def robot(k: int) -> None:
        for n in range(REQUESTS):
            barrier.wait(WAIT_S)  # all robots ask at once, as robots on one control rate do
            stamp = 10**9 * (k + 1) + 10**7 * n
            results[k].append((stamp, clients[k].infer(observation(stamp), WAIT_S).actions))

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(4 * WAIT_S)
    after = request(server, "GET", "/stats")[1]
    assert after["requests"] - before["requests"] == CLIENTS * REQUESTS
    assert after["max_batch_size_seen"] > 1, after
    assert max(c.report().batch_size_mean for c in clients) > 1
    print(f"batch sizes {after['batch_sizes']}, queue p50 {after['queue_ms_p50']} ms, "
          f"inference p50 {after['inference_ms_p50']} ms")
    reference = SinePolicy(latency_s=0.0)  # the sine chunk is a function of the observation's stamp
    for k in range(CLIENTS):
        assert len(results[k]) == REQUESTS
        for stamp, actions in results[k]:
            np.testing.assert_array_equal(actions, reference.infer(observation(stamp)).actions)


def test_every_bad_request_gets_its_4xx_and_the_server_keeps_serving(server: ServerProcess) -> None:
    good = observation(10**9)
    big = np.zeros((1400, 1600, 3), np.uint8)  # 6.7 MB per frame, twice: over the 4 MiB limit
    cases = {
        "missing token": (request, ("POST", "/infer", body(good)), {"token": None}, 401, "missing bearer token"),
        "wrong token": (request, ("POST", "/infer", body(good)), {"token": "guess"}, 401, "wrong bearer token"),
        "wrong state shape": (request, ("POST", "/infer", body(good, array_state=np.zeros(5))), {}, 422,
                              "'state' has 5 values, the model expects 4"),
        "wrong image dtype": (request, ("POST", "/infer", body(good, **{
            "array_camera.head.current": np.zeros((16, 12, 3), np.float32)})), {}, 422, "uint8"),
        "unknown robot type": (request, ("POST", "/infer", body(good, robot_type="hexapod")), {}, 422,
                               "unknown robot type 'hexapod'"),
        "oversized payload": (request, ("POST", "/infer", body(observation(10**9, image=big))), {}, 413,
                              f"over the server's limit of {int(MAX_REQUEST_MB * 2**20)} bytes"),
        "malformed frame": (request, ("POST", "/infer", b"\x05\x00\x00\x00\x00\x00\x00\x00{nope"), {}, 400,
                            "malformed frame"),
        "wrong content type": (request, ("POST", "/infer", body(good)), {"content_type": "application/json"}, 415,
                               "content type"),
        "instruction the policy refuses": (request, ("POST", "/infer", body(good, instruction="word " * 300)), {},
                                           422, "the policy failed on this observation: PreprocessingError"),
        "unknown path": (request, ("GET", "/nope"), {}, 404, "no endpoint /nope"),
        "wrong method": (request, ("GET", "/infer"), {}, 405, "takes POST"),
    }
    for name, (send, args, kwargs, status, reason) in cases.items():
        got, answer = send(server, *args, **kwargs)
        assert (got, reason in answer.get("error", "")) == (status, True), f"{name}: {got} {answer}"
        ok, reply = request(server, "POST", "/infer", body(good))  # everyone else is still served
        assert ok == 200 and reply["frame"] > 0, f"after {name}: {ok} {reply}"
    stats = request(server, "GET", "/stats")[1]
    assert {"400", "401", "404", "405", "413", "415", "422"} <= set(stats["rejected"]), stats
    status, health = request(server, "GET", "/health", token=None)
    assert status == 200
    # The replica runs at the server's priority, not at the 15 steps nicer that Ray gives its workers.
    assert health["niceness"] == os.getpriority(os.PRIO_PROCESS, 0), health
    assert request(server, "GET", "/metadata", token=None)[0] == 401
    with pytest.raises(InferenceError, match="cannot serve robot type 'hexapod'"):
        RemoteInference(server.url, "hexapod", TOKEN).start(WAIT_S)
    with pytest.raises(InferenceError, match=r"refused /metadata \(401\): wrong bearer token"):
        RemoteInference(server.url, ROBOT_TYPE, "guess").start(WAIT_S)


def test_a_reachable_host_without_a_token_is_refused_before_ray_starts(tmp_path: Path) -> None:
    model = write_stats(tmp_path / "model", {ROBOT_TYPE: len(JOINTS)})
    done = subprocess.run([sys.executable, "-m", "internvla_ros.cli.serve", "--model", str(model), "--host",
                           "0.0.0.0"], capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2 and "--host 0.0.0.0 is reachable from other machines: give --token-file" \
        in done.stderr, done.stderr


def test_bench_serve_with_two_robots_against_a_running_server(server: ServerProcess, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Two robot processes send the conveyor cell's observations through the policy node's client; the JSON
    holds the throughput, latencies and the server's batch sizes (values not judged: timing belongs to the
    benchmark, not to a test)."""
    path = tmp_path / "out" / "bench.json"
    (tmp_path / "token").write_text(TOKEN + "\n")
    code = main(["bench", "serve", "--clients", str(BENCH_CLIENTS), "--duration", "4", "--warmup", "2",
                 "--endpoint", server.url, "--token-file", str(tmp_path / "token"), "--config",
                 "conveyor_sorting.yaml", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, (out, path.is_file() and json.loads(path.read_text())["runs"][0]["first_error"])
    summary = json.loads(path.read_text())
    for key in ("chunks_per_s", "latency_ms_p50", "latency_ms_p99", "batch_sizes", "throughput_gain_over_batch1"):
        assert key in summary, key
    assert summary["throughput_gain_over_batch1"] is None  # no batch-1 server of its own to compare with
    (run,) = summary["runs"]
    assert run["endpoint"] == server.url and run["errors"] == 0
    assert run["chunks"] > 0 and summary["chunks_per_s"] == pytest.approx(run["chunks"] / 4, abs=1e-3)
    assert [c["client"] for c in run["per_client"]] == list(range(BENCH_CLIENTS))
    assert all(c["chunks"] > 0 and c["requests"] >= c["chunks"] for c in run["per_client"]), run["per_client"]
    assert sum(c["chunks"] for c in run["per_client"]) == run["chunks"]
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    sizes = {int(size): count for size, count in summary["batch_sizes"].items()}
    assert sizes and set(sizes) <= set(range(1, MAX_BATCH_SIZE + 1)) and all(count > 0 for count in sizes.values())
    assert "max batch ?: " in out and out.strip().splitlines()[-1] == "throughput_gain_over_batch1=None"


def test_a_node_stops_when_its_server_dies_and_resumes_when_it_answers_again(server: ServerProcess,
                                                                           tmp_path: Path) -> None:
    """Last in the module: it kills the module's server (SIGKILL to it and its local Ray) and starts it again."""
    import rclpy
    import yaml

    from internvla_ros.msg import PolicyStatus
    from internvla_ros.ros.conversions import time_to_ns

    from ..ros.conftest import NodeProcess
    from ..ros.policies import write_unit_stats
    from ..ros.test_controlled_stops import (
        ARM,
        BELT,
        BELT_SPEED,
        CAMERA_MAX_AGE_S,
        CONFIG,
        CONFIG_FILE,
        GRIPPER,
        JOINT_STATE_MAX_AGE_S,
        NS,
        Cause,
        Cell,
    )

    model = write_unit_stats(tmp_path / "model", CONFIG.robot_type, CONFIG.dim)  # the node's own normalisation
    stats = json.loads((model / "stats.json").read_text())
    stats[CONFIG.robot_type]["action"]["mean"][CONFIG.joint_index["conveyor_speed"]] = BELT_SPEED
    stats[CONFIG.robot_type]["action"]["std"][CONFIG.joint_index["conveyor_speed"]] = 0.25
    (model / "stats.json").write_text(json.dumps(stats))
    (tmp_path / "token").write_text(TOKEN)
    qos = tmp_path / "qos.yaml"
    qos.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"qos_overrides": {
        f"{NS}/{name}": {"publisher": {"depth": 1000}}
        for name in (f"{ARM}/joint_trajectory", f"{GRIPPER}/commands", f"{BELT}/commands")}}}}))
    policy = NodeProcess("internvla_ros.ros.policy_node", [
        "--params-file", str(CONFIG_FILE), "--params-file", str(qos), "-p", f"model_path:={model}",
        "-p", f"inference_endpoint:={server.url}", "-p", f"inference_token_file:={tmp_path / 'token'}",
        "-p", "autostart:=true", "-p", "safety.dry_run:=false", "-p", "instruction:=sort the parcels",
        "-p", "status_rate_hz:=20.0", "-p", "inference_timeout_s:=5.0", "-r", f"__ns:={NS}",
        "-p", f"safety.joint_state_max_age_s:={JOINT_STATE_MAX_AGE_S}",
        "-p", f"safety.camera_max_age_s:={CAMERA_MAX_AGE_S}"], tmp_path / "policy_node.log")
    context = rclpy.context.Context()
    rclpy.init(context=context)
    try:
        cell = Cell(context, policy)
        cell.wait(lambda: any(s.state == PolicyStatus.STATE_RUNNING for s in cell.statuses), "running", READY_S)
        assert ("noise_scale 1 is not used: the inference server samples with its own --noise-scale 0.5"
                in (tmp_path / "policy_node.log").read_text())
        cell.moving()
        before = cell.statuses[-1]
        killed = cell.now()
        server.kill()
        # The node learns of it from its next request (refused) or the one in flight (reset): it holds, and its
        # status names the server (not a stale-input blip of a loaded machine).
        holding = cell.status_after(killed, lambda s: s.state == PolicyStatus.STATE_HOLDING
                                    and server.url in s.last_error, "holding, naming the server")
        assert "unreachable" in holding.last_error, holding.last_error
        stamps = [time_to_ns(s.header.stamp) for s in cell.statuses]
        cause = max(t for t in stamps if t < time_to_ns(holding.header.stamp))  # the hold began after it
        cell.belt_at_rest_after(cause)
        server.start()
        cell.wait(lambda: server.answers() or server.process.poll() is not None, "the server back", READY_S)
        resumed = cell.status_after(killed, lambda s: s.worker_restarts > before.worker_restarts
                                    and s.state == PolicyStatus.STATE_RUNNING, "resumed", WAIT_S)
        stamps = [time_to_ns(s.header.stamp) for s in cell.statuses]
        cleared = max(t for t in stamps if t < time_to_ns(resumed.header.stamp))  # still holding then
        cell.belt_rises_after(cleared)
        cell.judge(Cause("inference server killed", cause, time_to_ns(holding.header.stamp) - cause, cleared))
        assert policy.stop() == 0, policy.output()[-3000:]
    finally:
        policy.stop()
        context.try_shutdown()
