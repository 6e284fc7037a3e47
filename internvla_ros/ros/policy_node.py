"""policy_node: the InternVLA-A1 policy as a ROS 2 lifecycle node.

configure  = read the robot parameters, start the inference worker (loads and warms up the model);
activate   = start commanding (from the measured joint positions, at rest);
deactivate = hold the last safe position; cleanup = stop the worker and release everything.

Threads: a single-threaded executor handles inputs, services and status (rclpy's multi-threaded executor
costs far more CPU than the callbacks themselves); a control thread sleeps on the node clock until each
control period (so `use_sim_time` works) and ticks the runtime; an inference thread requests
observations and waits for the inference worker process, so neither the GIL nor the model's BLAS
threads compete with the control loop. Every command goes through the runtime's limits first.

    ros2 run internvla_ros policy_node --ros-args --params-file config/dual_arm.yaml -p autostart:=true
"""

from __future__ import annotations

import signal
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from internvla_ros.model.errors import ModelError
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.msg import ActionChunk, PolicyStatus
from internvla_ros.paths import default_model_dir
from internvla_ros.ros.conversions import NS_PER_S, RclpyClock, time_to_ns
from internvla_ros.ros.images import ImageError, to_rgb
from internvla_ros.ros.messages import (
    action_chunk_msg,
    diagnostics_msg,
    forward_msg,
    rgb_image_msg,
    status_msg,
    trajectory_msg,
)
from internvla_ros.runtime import ActionMapper, ControlOutput, PolicyRuntime, RuntimeConfig
from internvla_ros.runtime.driver import ChunkEvent, RuntimeDriver
from internvla_ros.runtime.errors import PolicyRuntimeError
from internvla_ros.runtime.node_parameters import NODE_PARAMETERS, NOT_ROBOT_CONFIG
from internvla_ros.runtime.status import status_report
from internvla_ros.runtime.worker import InferenceWorker

NODE_NAME = "policy_node"
# Safe to change while configured or active; every other change needs cleanup first.
LIVE_PARAMETERS = {"instruction", "safety.dry_run"}
LATENCY_WINDOW = 200
LOG_THROTTLE_S = 2.0
INSTRUCTION_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)


class PolicyNode(LifecycleNode):
    """Cameras + joint_states + instruction in; trajectories / forward commands, chunks and status out."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, automatically_declare_parameters_from_overrides=True, **kwargs)
        for name, default in NODE_PARAMETERS.items():
            if not self.has_parameter(name):
                self.declare_parameter(name, default)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._configured = False
        self._active = False
        self._runtime: PolicyRuntime | None = None
        self._worker: InferenceWorker | None = None
        self._driver: RuntimeDriver | None = None
        self._outputs: dict[str, Any] = {}
        self._inputs: list[Any] = []
        self._operator_services: list[Any] = []
        self._status_pub = self.create_publisher(PolicyStatus, "~/status", 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._latencies: deque[int] = deque(maxlen=LATENCY_WINDOW)
        self._chunk_id = 0
        self._commands_sent = 0
        self._invalid_inputs = 0
        self._instruction = str(self.get_parameter("instruction").value)
        self._warned: dict[str, float] = {}
        status_rate_hz = float(self.get_parameter("status_rate_hz").value)
        if not status_rate_hz > 0.0:
            msg = f"status_rate_hz must be > 0, got {status_rate_hz}"
            raise ValueError(msg)
        self._status_timer = self.create_timer(1.0 / status_rate_hz,
                                               self._publish_status)
        if self.get_parameter("autostart").value:
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # Lifecycle -------------------------------------------------------------------------------------

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = RuntimeConfig.from_parameters(self._robot_parameters(), ignore=NOT_ROBOT_CONFIG)
            model_dir = Path(self.get_parameter("model_path").value or default_model_dir())
            stats = NormalizationStats.load(model_dir / "stats.json", config.robot_type)
            self._runtime = PolicyRuntime(config, ActionMapper(config, stats))
        except (PolicyRuntimeError, ModelError, OSError) as err:
            self._runtime = None
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        self._runtime.set_instruction(self._instruction)
        self.get_logger().info(f"starting the inference worker for {model_dir}")
        self._worker = InferenceWorker(
            str(self.get_parameter("policy_factory").value),
            {"model": str(model_dir), "tokenizer": self.get_parameter("tokenizer_path").value or None,
             "dtype": self.get_parameter("dtype").value, "backend": self.get_parameter("backend").value,
             "fallback": bool(self.get_parameter("backend_fallback").value),
             "threads": int(self.get_parameter("inference_threads").value),
             "cameras": {camera.name: camera.slot for camera in config.cameras}},
            threads=int(self.get_parameter("inference_threads").value))
        try:
            info = self._worker.start(timeout_s=float(self.get_parameter("startup_timeout_s").value))
        except PolicyRuntimeError as err:
            self.get_logger().error(f"configure failed: {err}")
            self._worker, self._runtime = None, None
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"inference worker ready: {info}")
        self._create_interfaces(config)
        self._configured = True
        self.get_logger().info("configured")
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        assert self._runtime is not None and self._worker is not None
        self._active = True
        clock = RclpyClock(self.get_clock(), self.context)
        self._driver = RuntimeDriver(self._runtime, self._worker.infer, clock, self._publish_commands,
                                     on_chunk=self._on_chunk, on_problem=self._warn,
                                     control_priority=int(self.get_parameter("control_priority").value))
        self._driver.start()
        self.get_logger().info("activated")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._stop_worker_threads(hold=self._hold_and_stop)
        self.get_logger().info("deactivated: holding")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        self.get_logger().info("cleaned up")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Stops inference, commands a hold if running, and releases the worker (idempotent)."""
        self._active = False
        if self._runtime is not None:
            self._stop_worker_threads(hold=self._hold_and_stop)
            self.get_logger().info("shutting down: hold commanded")
        self._release()

    def _robot_parameters(self) -> dict[str, Any]:
        """Every parameter as dotted names (arrays as lists); the robot config ignores the node's own."""
        return {name: list(parameter.value) if isinstance(parameter.value, list | tuple)
                or hasattr(parameter.value, "tolist") else parameter.value
                for name, parameter in self._parameters.items() if parameter.type_ != Parameter.Type.NOT_SET}

    def _create_interfaces(self, config: RuntimeConfig) -> None:
        for controller in config.controllers:
            if controller.type == "joint_trajectory":
                self._outputs[controller.name] = self.create_lifecycle_publisher(
                    JointTrajectory, f"{controller.name}/joint_trajectory", 10)
            else:
                self._outputs[controller.name] = self.create_lifecycle_publisher(
                    Float64MultiArray, f"{controller.name}/commands", 10)
        self._outputs["~/action_chunk"] = self.create_lifecycle_publisher(ActionChunk, "~/action_chunk", 10)
        for camera in config.cameras:
            self._outputs[f"foresight/{camera.name}"] = self.create_lifecycle_publisher(
                Image, f"~/foresight/{camera.name}", qos_profile_sensor_data)
            self._inputs += [
                self.create_subscription(Image, camera.topic, lambda m, c=camera.name: self._on_image(c, m),
                                         qos_profile_sensor_data),
                self.create_subscription(CompressedImage, f"{camera.topic}/compressed",
                                         lambda m, c=camera.name: self._on_image(c, m), qos_profile_sensor_data),
            ]
        self._inputs += [
            self.create_subscription(JointState, "joint_states", self._on_joint_state, qos_profile_sensor_data),
            self.create_subscription(String, "instruction", self._on_instruction, INSTRUCTION_QOS),
        ]
        self._operator_services += [
            self.create_service(Trigger, "~/pause", self._on_pause),
            self.create_service(Trigger, "~/resume", self._on_resume),
            self.create_service(Trigger, "~/estop", self._on_estop),
            self.create_service(Trigger, "~/reset", self._on_reset),
        ]

    def _release(self) -> None:
        self._stop_worker_threads()
        for subscription in self._inputs:
            self.destroy_subscription(subscription)
        for service in self._operator_services:
            self.destroy_service(service)
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._inputs, self._operator_services, self._outputs = [], [], {}
        if self._worker is not None:
            self._worker.close()
        self._worker, self._runtime, self._configured = None, None, False

    def _stop_worker_threads(self, hold: Callable[[], None] | None = None) -> None:
        """Stops control, sends ``hold`` right away (not after an inference in flight), then inference."""
        if self._driver is not None:
            self._driver.stop(hold)
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
            self._runtime.update_camera(camera, self._stamp_ns(msg.header), pixels)

    def _on_joint_state(self, msg: JointState) -> None:
        if self._runtime is None:
            return
        accepted = self._runtime.update_joint_state(self._stamp_ns(msg.header), list(msg.name), list(msg.position),
                                                    list(msg.velocity) or None)
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
            if self._configured and parameter.name not in LIVE_PARAMETERS:
                return SetParametersResult(
                    successful=False,
                    reason=f"'{parameter.name}' cannot change while configured: deactivate and clean up the node, "
                           f"set it, then configure again (live: {sorted(LIVE_PARAMETERS)})")
            if parameter.name == "instruction" and not str(parameter.value).strip():
                return SetParametersResult(successful=False, reason="an empty instruction is not a task; "
                                                                    "keep the current one or send a new one")
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

    def _controllers_without_subscribers(self) -> list[str]:
        """Command topics nobody listens to: a controller that is not loaded, or a wrong remap."""
        assert self._runtime is not None
        return [self._outputs[c.name].topic_name for c in self._runtime.config.controllers
                if c.name in self._outputs and self._outputs[c.name].get_subscription_count() == 0]

    def _publish_status(self) -> None:
        now_ns = self._now_ns()
        if self._runtime is None:
            msg = PolicyStatus(state=PolicyStatus.STATE_INACTIVE, instruction=self._instruction)
            msg.header.stamp = self.get_clock().now().to_msg()
        else:
            report = status_report(self._runtime.status(now_ns), self._instruction, self._latencies,
                                   self._commands_sent, self._invalid_inputs)
            msg = status_msg(report, self._active)
            if self._active and not self._instruction:
                waiting = "no instruction yet: publish one on the instruction topic (holding until then)"
                msg.last_error = f"{msg.last_error}; {waiting}" if msg.last_error else waiting
            unheard = self._controllers_without_subscribers()
            if self._active and unheard:
                warning = (f"no subscriber on {', '.join(unheard)}: is the controller loaded and "
                           "the topic remapped correctly?")
                msg.last_error = f"{msg.last_error}; {warning}" if msg.last_error else warning
        self._status_pub.publish(msg)
        self._diagnostics_pub.publish(diagnostics_msg(self.get_fully_qualified_name(), msg))


def main(args: list[str] | None = None) -> int:
    # Ctrl-C is handled here, not by rclpy, so the final hold is published before the context goes down.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    # Also when started with SIGINT ignored (a background job), and on SIGTERM (launch's second step).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        node = PolicyNode()
    except ValueError as err:
        print(f"ERROR: {err}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
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
