"""policy_node: the InternVLA-A1 policy as a ROS 2 lifecycle node.

configure  = read the robot parameters, start the inference worker (loads and warms up the model);
activate   = start commanding (from the measured joint positions, at rest);
deactivate = hold the last safe position; cleanup = stop the worker and release everything.

Threads: the executor (ros/lifecycle.TransitionExecutor) handles inputs, services and status inline,
as a single-threaded executor does (rclpy's multi-threaded executor costs far more CPU than the callbacks
themselves), and runs lifecycle transitions on a thread of their own: configure returns only once the
model is loaded (so "inactive" keeps meaning "ready to activate"), while get_state answers
"configuring" and ~/status reports the loading progress. Transitions change what the input, service
and status callbacks read under one lock, never while waiting for the model. A control thread sleeps
on the node clock until each control period (so `use_sim_time` works) and ticks the runtime; an
inference thread requests observations and waits for the inference worker process, so neither the GIL
nor the model's BLAS threads compete with the control loop. Every command goes through the runtime's limits first.

    ros2 run internvla_ros policy_node --ros-args --params-file config/dual_arm.yaml -p autostart:=true
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.qos_overriding_options import QoSOverridingOptions
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.model.errors import ModelError
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.msg import ActionChunk
from internvla_ros.paths import default_model_dir
from internvla_ros.ros.conversions import NS_PER_S, RclpyClock, time_to_ns
from internvla_ros.ros.images import ImageError, to_rgb
from internvla_ros.ros.lifecycle import AnsweringLifecycleNode, TransitionExecutor, transition
from internvla_ros.ros.messages import action_chunk_msg, forward_msg, rgb_image_msg, trajectory_msg
from internvla_ros.ros.node_parameters import declare_node_parameters, robot_parameters
from internvla_ros.ros.node_status import NodeSnapshot, StatusReporter
from internvla_ros.runtime import ActionMapper, ControlOutput, PolicyRuntime, RuntimeConfig
from internvla_ros.runtime.driver import ChunkEvent, RuntimeDriver
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.health import ControllerLink, HealthMonitor
from internvla_ros.runtime.node_parameters import NOT_ROBOT_CONFIG, QOS_OVERRIDES_PREFIX
from internvla_ros.runtime.policy_registry import policy_entry
from internvla_ros.runtime.worker import InferenceWorker
from internvla_ros.serve.client import RemoteInference, remote_inference
from internvla_ros.serve.errors import ServeError

NODE_NAME = "policy_node"
# Safe to change while configured or active; every other change needs cleanup first.
LIVE_PARAMETERS = {"instruction", "safety.dry_run"}
LATENCY_WINDOW = 200
LOG_THROTTLE_S = 2.0
# Forward commands are a stream where each value is one control period's step: a slow reader must get them
# late rather than lose one (a lost command makes the next step twice as large). 1 s at 100 Hz.
FORWARD_COMMAND_DEPTH = 100
SIGNAL_POLL_S = 0.1  # how soon the executor loop notices SIGINT/SIGTERM
# Smaller steps back of ROS time (two /clock publishers out of step) only delay control by as much.
CLOCK_JUMP_MIN_NS = 100_000_000
INSTRUCTION_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
# Every topic's history, depth and reliability can be overridden with qos_overrides.<topic>.<kind>.<policy>.
QOS_OVERRIDES = QoSOverridingOptions.with_default_policies()


class PolicyNode(AnsweringLifecycleNode):
    """Cameras + joint_states + instruction in; trajectories / forward commands, chunks and status out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True, **kwargs)
        declare_node_parameters(self)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._lock = threading.RLock()  # what transitions change and the executor's callbacks read
        self._configured = False
        self._progress: tuple[float, str] | None = None  # a running configure: (start, what it does)
        self._failure = ""  # why the last transition failed, until one succeeds
        self._starting_worker: InferenceWorker | RemoteInference | None = None
        self._active = False
        self._runtime: PolicyRuntime | None = None
        self._worker: InferenceWorker | RemoteInference | None = None
        self._driver: RuntimeDriver | None = None
        self._outputs: dict[str, Any] = {}
        self._inputs: list[Any] = []
        self._operator_services: list[Any] = []
        self._reporter = StatusReporter(self)
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._chunk_id = 0
        self._commands_sent = 0
        self._invalid_inputs = 0
        self._instruction = str(self.get_parameter("instruction").value)
        self._warned: dict[str, float] = {}
        self._runtime_clock = RclpyClock(self.get_clock())  # not _clock: rclpy.Node keeps its clock there
        self._clock_jumps = self._runtime_clock.on_backward_jump(CLOCK_JUMP_MIN_NS, self._on_clock_jump)
        self._status_timer = self.create_timer(1.0 / float(self.get_parameter("status_rate_hz").value),
                                               self._publish_status)
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart, callback_group=self.lifecycle_group)

    # Lifecycle -------------------------------------------------------------------------------------

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.run_transitions(self.trigger_configure, self.trigger_activate)

    @transition("configure")
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._progress = (time.monotonic(), "checking the parameters")
        try:
            result = self._configure(state)
        finally:
            self._progress = None
        return result

    def _configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = RuntimeConfig.from_parameters(robot_parameters(self), ignore=NOT_ROBOT_CONFIG)
            model_dir = Path(self.get_parameter("model_path").value or default_model_dir())
            stats = NormalizationStats.load(model_dir / "stats.json", config.robot_type)
            policy_entry(str(self.get_parameter("policy_factory").value))
            runtime = PolicyRuntime(config, ActionMapper(config, stats))
        except (PolicyRuntimeError, ModelError, OSError) as err:
            return self._failed(f"configure failed: {err}")
        runtime.set_instruction(self._instruction)
        endpoint = str(self.get_parameter("inference_endpoint").value).strip()
        if endpoint:  # the policy runs on an inference server: wait until it answers and knows this robot
            try:
                worker: InferenceWorker | RemoteInference = remote_inference(
                    endpoint, config.robot_type, str(self.get_parameter("inference_token_file").value))
            except (ValueError, ServeError) as err:
                return self._failed(f"configure failed: {err}")
            self.get_logger().info(f"using the inference server {endpoint}")
            self._progress = (time.monotonic(), f"waiting for the inference server {endpoint}")
            self._starting_worker = worker
        else:
            self.get_logger().info(f"starting the inference worker for {model_dir}")
            self._progress = (time.monotonic(), f"loading the model from {model_dir}")
            self._starting_worker = worker = self._local_worker(config, model_dir)
        try:
            info = worker.start(timeout_s=float(self.get_parameter("startup_timeout_s").value))
        except PolicyRuntimeError as err:
            return self._failed(f"configure failed: {err}")
        finally:
            self._starting_worker = None
        self.get_logger().info(f"inference ready: {info}")
        if endpoint:  # the server's noise scale is what applies (None: a server older than the setting, as trained)
            node_noise, server_noise = float(self.get_parameter("noise_scale").value), info.get("noise_scale")
            if (1.0 if server_noise is None else server_noise) != node_noise:
                self.get_logger().warning(f"noise_scale {node_noise:g} is not used: the inference server samples "
                                          f"with its own --noise-scale {server_noise}")
        with self._lock:  # from here on, on_error releases what a failure leaves behind
            self._runtime, self._worker = runtime, worker
            self._reporter.health = HealthMonitor()
            self._create_interfaces(config)
            self._configured, self._failure = True, ""
        return super().on_configure(state)

    def _local_worker(self, config: RuntimeConfig, model_dir: Path) -> InferenceWorker:
        return InferenceWorker(
            str(self.get_parameter("policy_factory").value),
            {"model": str(model_dir), "tokenizer": self.get_parameter("tokenizer_path").value or None,
             "dtype": self.get_parameter("dtype").value, "backend": self.get_parameter("backend").value,
             "fallback": bool(self.get_parameter("backend_fallback").value),
             "threads": int(self.get_parameter("inference_threads").value),
             "noise_scale": float(self.get_parameter("noise_scale").value),
             "cameras": {camera.name: camera.slot for camera in config.cameras}},
            threads=int(self.get_parameter("inference_threads").value))

    def _failed(self, reason: str) -> TransitionCallbackReturn:
        self.get_logger().error(reason)
        self._failure = reason
        return TransitionCallbackReturn.FAILURE

    @transition("activate")
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._runtime is not None and self._worker is not None
        result = super().on_activate(state)  # the lifecycle publishers first: no command is dropped
        if result != TransitionCallbackReturn.SUCCESS:
            return result
        self._active = True
        self._driver = RuntimeDriver(self._runtime, self._worker, self._runtime_clock, self._publish_commands,
                                     on_chunk=self._on_chunk, on_problem=self._warn,
                                     control_priority=int(self.get_parameter("control_priority").value),
                                     inference_timeout_s=float(self.get_parameter("inference_timeout_s").value),
                                     added_latency_s=float(self.get_parameter("added_latency_ms").value) / 1000.0)
        self._driver.start()
        return result

    @transition("deactivate")
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_worker_threads(hold=self._hold_and_stop)
        self.get_logger().info("deactivated: holding")
        return super().on_deactivate(state)

    @transition("cleanup")
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    @transition("shutdown")
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    @transition("error")
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After a transition raised: hold if commanding, then release the worker and every interface."""
        self._failure = self._failure or "a transition raised (see the log)"
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stops inference, commands a hold if running, and releases the worker (idempotent; also stops a
        worker that is still loading, so a configure in progress fails at once)."""
        self._active = False
        starting = self._starting_worker
        if starting is not None:
            starting.kill()
        if self._runtime is not None:
            self._stop_worker_threads(hold=self._hold_and_stop)
            self.get_logger().info("shutting down: hold commanded")
        self._release()

    def _create_interfaces(self, config: RuntimeConfig) -> None:
        for controller in config.controllers:
            if controller.type == "joint_trajectory":
                self._outputs[controller.name] = self._publisher(JointTrajectory, f"{controller.name}/joint_trajectory")
            else:
                self._outputs[controller.name] = self._publisher(Float64MultiArray, f"{controller.name}/commands",
                                                                 FORWARD_COMMAND_DEPTH)
        self._outputs["~/action_chunk"] = self._publisher(ActionChunk, "~/action_chunk")
        for camera in config.cameras:
            self._outputs[f"foresight/{camera.name}"] = self._publisher(Image, f"~/foresight/{camera.name}",
                                                                        qos_profile_sensor_data)
            self._inputs += [
                self._subscription(Image, camera.topic, lambda m, c=camera.name: self._on_image(c, m)),
                self._subscription(CompressedImage, f"{camera.topic}/compressed",
                                   lambda m, c=camera.name: self._on_image(c, m)),
            ]
        self._inputs += [
            self._subscription(JointState, "joint_states", self._on_joint_state),
            self._subscription(String, "instruction", self._on_instruction, INSTRUCTION_QOS),
        ]
        services = {"pause": self._on_pause, "resume": self._on_resume, "estop": self._on_estop,
                    "reset": self._on_reset}
        self._operator_services += [self.create_service(Trigger, f"~/{name}", self._locked(callback))
                                    for name, callback in services.items()]

    def _publisher(self, msg_type: Any, topic: str, qos: QoSProfile | int = 10) -> Any:
        return self.create_lifecycle_publisher(msg_type, topic, qos, qos_overriding_options=QOS_OVERRIDES)

    def _subscription(self, msg_type: Any, topic: str, callback: Callable[[Any], None],
                      qos: QoSProfile = qos_profile_sensor_data) -> Any:
        return self.create_subscription(msg_type, topic, self._locked(callback), qos,
                                        qos_overriding_options=QOS_OVERRIDES)

    def _locked(self, callback: Callable[..., Any]) -> Callable[..., Any]:
        """The callback under the node's lock: a transition on the lifecycle thread never changes what it
        reads half-way (the lock is held for microseconds on both sides, never while the model loads)."""

        def run(*args: Any) -> Any:
            with self._lock:
                return callback(*args)

        return run

    def _release(self) -> None:
        self._stop_worker_threads()
        with self._lock:
            inputs, services, outputs, worker = self._inputs, self._operator_services, self._outputs, self._worker
            self._inputs, self._operator_services, self._outputs = [], [], {}
            self._worker, self._runtime, self._configured = None, None, False
        for subscription in inputs:
            self.destroy_subscription(subscription)
        for service in services:
            self.destroy_service(service)
        for publisher in outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        if worker is not None:
            worker.close()

    def _stop_worker_threads(self, hold: Callable[[], None] | None = None) -> None:
        """Brings the robot to rest with the controlled stop, then ends control and inference; ``hold`` only
        when the stop could not run to its end (no control thread)."""
        if self._driver is not None:
            self._driver.stop(hold, cause="the node is deactivating or shutting down")
            self._driver = None
        elif hold is not None:
            hold()

    def _hold_and_stop(self) -> None:
        """Commands a hold at the current safe position (so a running trajectory stops), then idles."""
        assert self._runtime is not None
        output = self._runtime.hold_and_stop(self._now_ns())
        if output is not None:
            self._publish_commands(output)

    # Inputs ----------------------------------------------------------------------------------------

    def _now_ns(self) -> int:
        return self.get_clock().now().nanoseconds

    def _stamp_ns(self, header: Any) -> int:
        """The message's stamp, or the receive time when a driver leaves it zero."""
        stamp = time_to_ns(header.stamp)
        return stamp if stamp > 0 else self._now_ns()

    def _warn(self, key: str, message: str) -> None:
        """One log line per key and LOG_THROTTLE_S, so a bad input stream does not flood the log."""
        now = self.get_clock().now().nanoseconds / NS_PER_S
        if now - self._warned.get(key, -1e18) >= LOG_THROTTLE_S:
            self._warned[key] = now
            self.get_logger().warn(message)

    def _on_image(self, camera: str, msg: Image | CompressedImage) -> None:
        try:
            pixels = to_rgb(msg)
        except ImageError as err:
            self._invalid_inputs += 1
            self._warn(f"image:{camera}:{err}", f"camera {camera}: image ignored: {err}")
            return
        if self._runtime is not None:
            self._runtime.update_camera(camera, self._stamp_ns(msg.header), pixels, now_ns=self._now_ns())

    def _on_joint_state(self, msg: JointState) -> None:
        if self._runtime is None:
            return
        accepted = self._runtime.update_joint_state(self._stamp_ns(msg.header), list(msg.name), list(msg.position),
                                                    list(msg.velocity) or None, now_ns=self._now_ns())
        if not accepted:
            self._warn("joint_states", f"joint_states ignored: {self._runtime.status(self._now_ns()).last_error}")

    def _on_instruction(self, msg: String) -> None:
        text = msg.data.strip()
        if not text:
            self._invalid_inputs += 1
            self._warn("instruction", f"empty instruction ignored; keeping '{self._instruction}'")
            return
        self._set_instruction(text)

    def _set_instruction(self, text: str) -> None:
        self._instruction = text
        if self._runtime is not None:
            self._runtime.set_instruction(text)
        self.get_logger().info(f"instruction: '{text}'")

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        for parameter in parameters:
            if parameter.name.startswith(QOS_OVERRIDES_PREFIX):
                continue  # rclpy declares them read-only with each publisher and subscription
            if self._progress is not None and parameter.name not in LIVE_PARAMETERS:
                return SetParametersResult(successful=False, reason=f"'{parameter.name}' cannot change while "
                                           "the node configures: wait for it, clean up, then set it")
            if self._configured and parameter.name not in LIVE_PARAMETERS:
                return SetParametersResult(
                    successful=False,
                    reason=f"'{parameter.name}' cannot change while configured: deactivate and clean up the node, "
                           f"set it, then configure again (live: {sorted(LIVE_PARAMETERS)})")
            if parameter.name == "instruction" and not str(parameter.value).strip():
                return SetParametersResult(successful=False, reason="an empty instruction is not a task; "
                                                                    "keep the current one or send a new one")
        with self._lock:
            for parameter in parameters:
                if parameter.name == "instruction":
                    self._set_instruction(str(parameter.value).strip())
                elif parameter.name == "safety.dry_run" and self._runtime is not None:
                    self._runtime.set_dry_run(bool(parameter.value))
        return SetParametersResult(successful=True)

    # Services --------------------------------------------------------------------------------------

    def _service(self, response: Trigger.Response, action: str) -> Trigger.Response:
        if self._runtime is None:
            response.success, response.message = False, "not configured"
            return response
        if action == "pause":
            self._runtime.pause()
        elif action == "resume":
            self._runtime.resume()
        elif action == "estop":
            self._runtime.estop("e-stop requested on ~/estop")
        elif action == "reset":
            failed = self._driver.failed_threads if self._driver is not None else ()
            if failed:
                response.success = False
                response.message = (f"reset refused: the {' and '.join(failed)} thread failed (see last_error on "
                                    "~/status), so nothing would run the robot; the e-stop stays latched: "
                                    "deactivate, cleanup and configure the node again")
                self.get_logger().error(response.message)
                return response
            self._runtime.reset_estop()
        response.success, response.message = True, f"{action}: state {self._runtime.state.value}"
        self.get_logger().warn(f"{action} requested: {response.message}")
        return response

    def _on_pause(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._service(response, "pause")

    def _on_resume(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._service(response, "resume")

    def _on_estop(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._service(response, "estop")

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        return self._service(response, "reset")

    def _on_clock_jump(self, now_ns: int, jump_ns: int) -> None:
        """ROS time went back (a looping bag, a simulation reset) or changed source: the runtime moves to
        the new time line, stops under control and holds until fresh inputs arrive."""
        self._warned.clear()  # throttled warnings are stamped on the old time line
        self.get_logger().warn(f"ROS time jumped by {jump_ns / NS_PER_S:+.3f} s to {now_ns / NS_PER_S:.3f} s: "
                               "stopping under control; holding until fresh inputs arrive")
        if self._driver is not None:
            self._driver.clock_jumped()  # so that no thread hands the runtime a time read before the jump
        elif self._runtime is not None:
            self._runtime.clock_jumped(now_ns)

    # Control and inference -------------------------------------------------------------------------

    def _publish_commands(self, output: ControlOutput) -> None:
        for command in output.trajectories:
            self._outputs[command.controller].publish(trajectory_msg(command))
            self._commands_sent += 1
        for command in output.forward:
            self._outputs[command.controller].publish(forward_msg(command))
            self._commands_sent += 1

    def _on_chunk(self, event: ChunkEvent) -> None:
        runtime = self._runtime
        assert runtime is not None
        self._latencies.append(event.ready_ns - event.observation.request_ns)
        if event.outcome.accepted:
            self._chunk_id += 1
            self._outputs["~/action_chunk"].publish(action_chunk_msg(
                self._chunk_id, event.ready_ns, event.observation.stamp_ns, runtime.config.rates.chunk_step_ns,
                event.outcome.start_index, runtime.config.joint_names, event.outcome.positions))
        for camera, pixels in event.result.preview.items():
            self._outputs[f"foresight/{camera}"].publish(
                rgb_image_msg(pixels, event.ready_ns, f"{camera}_camera_optical_frame"))

    # Status ----------------------------------------------------------------------------------------

    def _publish_status(self) -> None:
        progress = self._progress
        with self._lock:
            runtime, driver = self._runtime, self._driver
            snapshot = NodeSnapshot(
                stamp_ns=self._now_ns(), lifecycle=self.lifecycle_state, failure=self._failure,
                progress=f"{progress[1]} ({time.monotonic() - progress[0]:.0f} s)" if progress else "",
                instruction=self._instruction, active=self._active,
                runtime=runtime.status(self._now_ns()) if runtime is not None else None,
                latencies_ns=tuple(self._latencies), commands_sent=self._commands_sent,
                invalid_inputs=self._invalid_inputs,
                inference_timeouts=driver.inference_timeouts if driver else 0,
                worker_restarts=driver.worker_restarts if driver else 0,
                endpoint=self._worker.report() if isinstance(self._worker, RemoteInference) else None,
                controllers=tuple(ControllerLink(c.name, self._outputs[c.name].topic_name,
                                                 self._outputs[c.name].get_subscription_count())
                                  for c in (runtime.config.controllers if runtime else ()) if c.name in self._outputs))
        self._reporter.publish(snapshot)


def main(args: list[str] | None = None) -> int:
    # Ctrl-C is handled here, not by rclpy, so the final hold is published before the context goes down.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Also when started with SIGINT ignored (a background job), and on SIGTERM (launch's second step).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        node = PolicyNode()
    except (ValueError, ParameterException) as err:  # a node parameter out of its range or of the wrong type
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = TransitionExecutor()
    executor.add_node(node)
    # From here a signal only sets a flag: raised asynchronously inside rclpy's C++ calls, a KeyboardInterrupt
    # came out as an unrelated RuntimeError (and a crash) instead of a clean shutdown.
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
