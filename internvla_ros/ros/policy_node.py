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
from typing import Any, TypeVar

import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from internvla_ros.model.errors import ModelError
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.paths import default_model_dir
from internvla_ros.ros.conversions import NS_PER_S, RclpyClock, time_to_ns
from internvla_ros.ros.images import ImageError, to_rgb
from internvla_ros.ros.inference_setup import node_inference, noise_scale_warning
from internvla_ros.ros.lifecycle import AnsweringLifecycleNode, TransitionExecutor, transition
from internvla_ros.ros.node_interfaces import NodeInterfaces
from internvla_ros.ros.node_parameters import declare_node_parameters, robot_parameters
from internvla_ros.ros.node_status import NodeSnapshot, StatusReporter
from internvla_ros.ros.operator import OPERATOR_ACTIONS, operator_request, parameter_refusal
from internvla_ros.ros.transport import use_frame_transport
from internvla_ros.runtime import ActionMapper, ControlOutput, PolicyRuntime, RuntimeConfig
from internvla_ros.runtime.driver import ChunkEvent, RuntimeDriver
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.health import HealthMonitor
from internvla_ros.runtime.node_parameters import NOT_ROBOT_CONFIG, QOS_OVERRIDES_PREFIX
from internvla_ros.runtime.policy_registry import policy_entry
from internvla_ros.runtime.worker import InferenceWorker
from internvla_ros.serve.client import RemoteInference
from internvla_ros.serve.errors import ServeError

NODE_NAME = "policy_node"
LATENCY_WINDOW = 200
LOG_THROTTLE_S = 2.0
SIGNAL_POLL_S = 0.1  # how soon the executor loop notices SIGINT/SIGTERM
# Smaller steps back of ROS time (two /clock publishers out of step) only delay control by as much.
CLOCK_JUMP_MIN_NS = 100_000_000
T = TypeVar("T")


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
        self._interfaces = NodeInterfaces(self, self._lock)
        self._reporter = StatusReporter(self)
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
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
        try:
            worker, starting = node_inference(self, config, model_dir)
        except (ValueError, ServeError) as err:
            return self._failed(f"configure failed: {err}")
        self.get_logger().info(starting)
        self._progress = (time.monotonic(), starting)
        self._starting_worker = worker
        try:
            info = worker.start(timeout_s=float(self.get_parameter("startup_timeout_s").value))
        except PolicyRuntimeError as err:
            return self._failed(f"configure failed: {err}")
        finally:
            self._starting_worker = None
        self.get_logger().info(f"inference ready: {info}")
        if isinstance(worker, RemoteInference):
            warning = noise_scale_warning(float(self.get_parameter("noise_scale").value), info)
            if warning:
                self.get_logger().warning(warning)
        with self._lock:  # from here on, on_error releases what a failure leaves behind
            self._runtime, self._worker = runtime, worker
            self._reporter.health = HealthMonitor()
            self._interfaces.create(config, self._on_image, self._on_joint_state, self._on_instruction,
                                    {action: lambda _, response, a=action: self._service(response, a)
                                     for action in OPERATOR_ACTIONS})
            self._configured, self._failure = True, ""
        return super().on_configure(state)

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

    def _release(self) -> None:
        self._stop_worker_threads()
        with self._lock:
            worker = self._worker
            self._worker, self._runtime, self._configured = None, None, False
        self._interfaces.release()
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

    def _at_now(self, call: Callable[[int], T]) -> T:
        """``call(now)`` for handing an input to the runtime: with the driver running, reading the clock and
        the hand-over are one step with respect to a clock jump, so no input judged against the old time line
        reaches the runtime after the jump handler has moved it to the new one. A zero stamp (a driver that
        leaves it empty) stands for the receive time ``now``."""
        driver = self._driver
        return driver.at_now(call) if driver is not None else call(self._now_ns())

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
        runtime = self._runtime
        if runtime is not None:
            stamp = time_to_ns(msg.header.stamp)
            self._at_now(lambda now: runtime.update_camera(camera, stamp if stamp > 0 else now, pixels, now_ns=now))

    def _on_joint_state(self, msg: JointState) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        stamp, names, positions = time_to_ns(msg.header.stamp), list(msg.name), list(msg.position)
        velocities = list(msg.velocity) or None
        accepted = self._at_now(lambda now: runtime.update_joint_state(
            stamp if stamp > 0 else now, names, positions, velocities, now_ns=now))
        if not accepted:
            self._warn("joint_states", f"joint_states ignored: {runtime.status(self._now_ns()).last_error}")

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
            refusal = parameter_refusal(parameter.name, parameter.value, configuring=self._progress is not None,
                                        configured=self._configured)
            if refusal is not None:
                return SetParametersResult(successful=False, reason=refusal)
        with self._lock:
            for parameter in parameters:
                if parameter.name == "instruction":
                    self._set_instruction(str(parameter.value).strip())
                elif parameter.name == "safety.dry_run" and self._runtime is not None:
                    try:
                        self._runtime.set_dry_run(bool(parameter.value))
                    except PolicyRuntimeError as err:  # actuation cannot restart: the dry run stays on
                        return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    # Services --------------------------------------------------------------------------------------

    def _service(self, response: Trigger.Response, action: str) -> Trigger.Response:
        failed = self._driver.failed_threads if self._driver is not None else ()
        response.success, response.message = operator_request(self._runtime, failed, action)
        if response.success:
            self.get_logger().warn(f"{action} requested: {response.message}")
        elif self._runtime is not None:
            self.get_logger().error(response.message)
        return response

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
        self._commands_sent += self._interfaces.publish_commands(output)

    def _on_chunk(self, event: ChunkEvent) -> None:
        runtime = self._runtime
        assert runtime is not None
        self._latencies.append(event.ready_ns - event.observation.request_ns)
        self._interfaces.publish_chunk(event, runtime.config)

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
                controllers=self._interfaces.controller_links(runtime.config if runtime else None))
        self._reporter.publish(snapshot)


def main(args: list[str] | None = None) -> int:
    # Ctrl-C is handled here, not by rclpy, so the final hold is published before the context goes down.
    use_frame_transport()
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
