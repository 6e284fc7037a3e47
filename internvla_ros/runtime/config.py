"""The robot configuration of the policy runtime, read from a ROS parameter file.

One YAML file (``policy_node: ros__parameters: {...}``) serves both the ROS node (as its params file)
and this loader, so every value is a ROS parameter: a scalar or a flat list of one type; nested dicts
become dotted names (``rates.control_rate_hz``). Everything is validated here, once, and every error
names the dotted key, the problem and the allowed range.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from internvla_ros.runtime.errors import RuntimeConfigError
from internvla_ros.runtime.params import ParameterReader, flatten_parameters

DEFAULT_NODE_NAME = "policy_node"
WILDCARD_NODE_NAME = "/**"
ROS_PARAMETERS_KEY = "ros__parameters"

CONTROLLER_TYPES = ("joint_trajectory", "forward_command")
EXECUTION_MODES = ("delay_compensated", "uncompensated", "reference", "rtc")
RTC_SCHEDULES = ("exp", "linear", "hard")  # model/rtc.py SCHEDULES (the runtime does not import the model)
RTC_MAX_BETA = 100.0
GRIPPER_MODES = ("threshold", "scale")
STATE_FIELDS = ("position", "velocity")
CAMERA_SLOTS = 3  # head, left wrist, right wrist: the model's three image slots

MODEL_CHUNK_SIZE = 50
MODEL_ACTION_DIM = 32
PAPER_CHUNK_STEP_HZ = 30.0  # the paper's 30 fps: one action per frame
PAPER_FRAME_HISTORY_STEPS = 15  # the t-15 frame for visual foresight (0.5 s at 30 fps)

MAX_RATE_HZ = 1000.0
MAX_INFERENCE_RATE_HZ = 50.0
MAX_AGE_S = 10.0
MAX_ABS_POSITION = 1.0e3
MAX_GRIPPER_HOLD_S = 10.0
MAX_VELOCITY = 1.0e2
MAX_ACCELERATION = 1.0e4
NS_PER_S = 1_000_000_000


def period_ns(rate_hz: float) -> int:
    """Integer nanoseconds per cycle; time in the runtime is integer nanoseconds throughout."""
    return round(NS_PER_S / rate_hz)


@dataclass(frozen=True)
class CameraConfig:
    name: str
    topic: str
    slot: int  # 0 head, 1 left wrist, 2 right wrist


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits; for a velocity-commanded joint (a conveyor) 'position' is the commanded value."""

    min_position: float
    max_position: float
    max_velocity: float
    max_acceleration: float
    max_jump: float


@dataclass(frozen=True)
class JointConfig:
    name: str
    limits: JointLimits
    state_field: str = "position"  # which joint_states field is this joint's model state


@dataclass(frozen=True)
class ControllerConfig:
    name: str
    type: str  # one of CONTROLLER_TYPES
    joints: tuple[str, ...]


@dataclass(frozen=True)
class GripperConfig:
    """Maps the model's gripper value (0 open .. 1 closed) to joint positions and back."""

    joint: str
    mode: str  # threshold: binary open/closed; scale: linear between open and closed
    threshold: float
    open_position: float
    closed_position: float
    min_hold_s: float = 0.0  # threshold mode: keep each open or close at least this long (0: off)


@dataclass(frozen=True)
class RatesConfig:
    inference_rate_hz: float
    control_rate_hz: float
    chunk_step_hz: float  # the model's action period (30 Hz in the paper), distinct from the control rate
    foresight_rate_hz: float  # how often the generation pass is recomputed instead of reused
    foresight_preview_rate_hz: float  # 0 = never decode the foresight image

    @property
    def control_period_ns(self) -> int:
        return period_ns(self.control_rate_hz)

    @property
    def inference_period_ns(self) -> int:
        return period_ns(self.inference_rate_hz)

    @property
    def chunk_step_ns(self) -> int:
        return period_ns(self.chunk_step_hz)


@dataclass(frozen=True)
class RtcConfig:
    """Real-time chunking (``execution.mode: rtc``): guidance towards the part of the old chunk still to run."""

    beta: float = 5.0  # the guidance weight's clip (0: plain sampling)
    schedule: str = "exp"  # soft-mask decay after the delay: exp, linear or hard
    execution_horizon: int = 0  # s in chunk steps; 0: the inference period in chunk steps


@dataclass(frozen=True)
class ExecutionConfig:
    mode: str  # one of EXECUTION_MODES
    blend_steps: int  # chunk steps over which an old plan hands over to a new one (0 = switch at once)
    reference_steps: int  # 'reference' mode: execute this many of the chunk's steps, then re-plan
    chunk_size: int
    action_dim: int
    frame_history_steps: int  # the older frame is this many chunk steps before the current one
    # > 0: the older frame may be a frame already sent as a current frame (so already encoded by the
    # policy) if it is within this many chunk steps of the exact one; 0: always the exact frame.
    history_reuse_steps: int = 0
    rtc: RtcConfig = RtcConfig()


@dataclass(frozen=True)
class SafetyConfig:
    camera_max_age_s: float
    joint_state_max_age_s: float
    dry_run: bool
    # Input stamps further ahead of the clock than this are refused (a future stamp would defeat the watchdog).
    max_future_stamp_s: float = 0.05
    # A trajectory repeats the one running for this long before it changes course, so it can reach its
    # controller this late and still join the running motion without a jump.
    trajectory_lead_s: float = 0.1

    @property
    def max_future_stamp_ns(self) -> int:
        return round(self.max_future_stamp_s * NS_PER_S)

    @property
    def trajectory_lead_ns(self) -> int:
        return round(self.trajectory_lead_s * NS_PER_S)

    @property
    def camera_max_age_ns(self) -> int:
        return round(self.camera_max_age_s * NS_PER_S)

    @property
    def joint_state_max_age_ns(self) -> int:
        return round(self.joint_state_max_age_s * NS_PER_S)


@dataclass(frozen=True)
class RuntimeConfig:
    robot_type: str  # the key of the normalisation statistics
    cameras: tuple[CameraConfig, ...]
    joints: tuple[JointConfig, ...]
    controllers: tuple[ControllerConfig, ...]
    absolute_mask: tuple[bool, ...]  # per joint: true = the model outputs absolute values, false = deltas
    grippers: tuple[GripperConfig, ...]
    rates: RatesConfig
    execution: ExecutionConfig
    safety: SafetyConfig
    joint_index: Mapping[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_index", {j.name: i for i, j in enumerate(self.joints)})

    @property
    def joint_names(self) -> tuple[str, ...]:
        return tuple(j.name for j in self.joints)

    @property
    def dim(self) -> int:
        return len(self.joints)

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], ignore: Collection[str] = ()) -> RuntimeConfig:
        """Builds and validates the config from dotted ROS parameter names (what the node receives).

        ``ignore``: names that belong to someone else (the node's own parameters, ``use_sim_time``);
        any other unknown name is an error, so a typo never passes silently.
        """
        reader = ParameterReader({k: v for k, v in parameters.items() if k not in ignore})
        config = _read_config(reader)
        reader.finish()
        return config

    @classmethod
    def from_yaml(
        cls,
        path: str | Path,
        node_name: str = DEFAULT_NODE_NAME,
        ignore: Collection[str] = (),
        overrides: Mapping[str, Any] | None = None,
    ) -> RuntimeConfig:
        """Loads ``<node_name>: ros__parameters:`` (or ``/**``) from a ROS parameter file.

        ``overrides``: dotted names replacing the file's values, as ``-p name:=value`` does for the node.
        """
        path = Path(path)
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            msg = f"{path}: cannot read the parameter file: {err}"
            raise RuntimeConfigError(msg) from err
        parameters = flatten_parameters(_node_parameters(document, node_name, path))
        parameters.update(overrides or {})
        return cls.from_parameters(parameters, ignore)


def _node_parameters(document: Any, node_name: str, path: Path) -> Mapping[str, Any]:
    if not isinstance(document, Mapping):
        msg = f"{path}: a ROS parameter file is a mapping '{node_name}: {{{ROS_PARAMETERS_KEY}: ...}}'"
        raise RuntimeConfigError(msg)
    for name in (node_name, f"{WILDCARD_NODE_NAME}/{node_name}", WILDCARD_NODE_NAME):
        block = document.get(name)
        if isinstance(block, Mapping) and isinstance(block.get(ROS_PARAMETERS_KEY), Mapping):
            return block[ROS_PARAMETERS_KEY]
    msg = f"{node_name}.{ROS_PARAMETERS_KEY}: not found in {path} (top-level keys: {sorted(document)})"
    raise RuntimeConfigError(msg)


def _read_config(reader: ParameterReader) -> RuntimeConfig:
    robot_type = reader.text("robot_type")
    cameras = _read_cameras(reader)
    joints = _read_joints(reader)
    names = tuple(j.name for j in joints)
    controllers = _read_controllers(reader, names)
    absolute_mask = reader.bool_list("action.absolute_mask", length=len(joints))
    grippers = _read_grippers(reader, names, absolute_mask, trajectory_joint_names(controllers))
    rates = _read_rates(reader)
    execution = _read_execution(reader, len(joints))
    safety = SafetyConfig(
        camera_max_age_s=reader.real("safety.camera_max_age_s", low=0.0, high=MAX_AGE_S, low_open=True),
        joint_state_max_age_s=reader.real("safety.joint_state_max_age_s", low=0.0, high=MAX_AGE_S, low_open=True),
        dry_run=reader.flag("safety.dry_run"),
        max_future_stamp_s=reader.real("safety.max_future_stamp_s", low=0.0, high=MAX_AGE_S,
                                       default=SafetyConfig.max_future_stamp_s),
        trajectory_lead_s=reader.real("safety.trajectory_lead_s", low=0.0, high=MAX_AGE_S,
                                      default=SafetyConfig.trajectory_lead_s),
    )
    _check_timing(rates, execution)
    return RuntimeConfig(
        robot_type=robot_type,
        cameras=cameras,
        joints=joints,
        controllers=controllers,
        absolute_mask=absolute_mask,
        grippers=grippers,
        rates=rates,
        execution=execution,
        safety=safety,
    )


def _read_cameras(reader: ParameterReader) -> tuple[CameraConfig, ...]:
    names = reader.str_list("cameras.names")
    if len(names) > CAMERA_SLOTS:
        msg = f"cameras.names: {len(names)} cameras, the model has {CAMERA_SLOTS} image slots"
        raise RuntimeConfigError(msg)
    cameras = tuple(
        CameraConfig(
            name=name,
            topic=reader.text(f"cameras.{name}.topic"),
            slot=reader.integer(f"cameras.{name}.slot", low=0, high=CAMERA_SLOTS - 1),
        )
        for name in names
    )
    slots = [c.slot for c in cameras]
    if len(set(slots)) != len(slots):
        msg = f"cameras.{cameras[-1].name}.slot: each model slot takes one camera, got slots {slots}"
        raise RuntimeConfigError(msg)
    return cameras


def _read_joints(reader: ParameterReader) -> tuple[JointConfig, ...]:
    names = reader.str_list("joints.names")
    default_jump = reader.real("safety.max_jump", low=0.0, high=MAX_ABS_POSITION, low_open=True)
    extra = sorted(reader.children("joints.limits") - set(names))
    if extra:
        msg = f"joints.limits.{extra[0]}: limits given for a joint that is not in joints.names"
        raise RuntimeConfigError(msg)
    joints = []
    for name in names:
        key = f"joints.limits.{name}"
        lo = reader.real(f"{key}.min_position", low=-MAX_ABS_POSITION, high=MAX_ABS_POSITION)
        hi = reader.real(f"{key}.max_position", low=-MAX_ABS_POSITION, high=MAX_ABS_POSITION)
        if hi <= lo:
            msg = f"{key}.max_position: {hi} must be greater than min_position {lo}"
            raise RuntimeConfigError(msg)
        limits = JointLimits(
            min_position=lo,
            max_position=hi,
            max_velocity=reader.real(f"{key}.max_velocity", low=0.0, high=MAX_VELOCITY, low_open=True),
            max_acceleration=reader.real(f"{key}.max_acceleration", low=0.0, high=MAX_ACCELERATION, low_open=True),
            max_jump=reader.real(
                f"{key}.max_jump", low=0.0, high=MAX_ABS_POSITION, low_open=True, default=default_jump
            ),
        )
        state_field = reader.text(f"{key}.state_field", choices=STATE_FIELDS, default="position")
        joints.append(JointConfig(name=name, limits=limits, state_field=state_field))
    return tuple(joints)


def _read_controllers(reader: ParameterReader, joint_names: tuple[str, ...]) -> tuple[ControllerConfig, ...]:
    names = reader.str_list("controllers.names")
    owner: dict[str, str] = {}
    controllers = []
    for name in names:
        key = f"controllers.{name}"
        joints = reader.str_list(f"{key}.joints")
        for joint in joints:
            if joint not in joint_names:
                msg = f"{key}.joints: {joint!r} is not in joints.names {list(joint_names)}"
                raise RuntimeConfigError(msg)
            if joint in owner:
                msg = f"{key}.joints: {joint!r} is already driven by controller {owner[joint]!r}"
                raise RuntimeConfigError(msg)
            owner[joint] = name
        controllers.append(
            ControllerConfig(name=name, type=reader.text(f"{key}.type", choices=CONTROLLER_TYPES), joints=joints)
        )
    unowned = [j for j in joint_names if j not in owner]
    if unowned:
        msg = f"controllers.names: joints {unowned} are driven by no controller"
        raise RuntimeConfigError(msg)
    return tuple(controllers)


def trajectory_joint_names(controllers: tuple[ControllerConfig, ...]) -> set[str]:
    """The joints on joint_trajectory controllers (the rest are on forward_command controllers)."""
    return {j for c in controllers if c.type == "joint_trajectory" for j in c.joints}


def _read_grippers(reader: ParameterReader, joint_names: tuple[str, ...], absolute_mask: tuple[bool, ...],
                   trajectory_joints: set[str]) -> tuple[GripperConfig, ...]:
    if not reader.has("grippers.names"):
        return ()
    grippers = []
    for name in reader.str_list("grippers.names"):
        key = f"grippers.{name}"
        if name not in joint_names:
            msg = f"grippers.names: {name!r} is not in joints.names {list(joint_names)}"
            raise RuntimeConfigError(msg)
        if not absolute_mask[joint_names.index(name)]:
            msg = f"action.absolute_mask: gripper {name!r} must be true: the model outputs grippers absolute"
            raise RuntimeConfigError(msg)
        opened = reader.real(f"{key}.open_position", low=-MAX_ABS_POSITION, high=MAX_ABS_POSITION)
        closed = reader.real(f"{key}.closed_position", low=-MAX_ABS_POSITION, high=MAX_ABS_POSITION)
        if opened == closed:
            msg = f"{key}.closed_position: must differ from open_position ({opened})"
            raise RuntimeConfigError(msg)
        mode = reader.text(f"{key}.mode", choices=GRIPPER_MODES)
        min_hold_s = reader.real(f"{key}.min_hold_s", low=0.0, high=MAX_GRIPPER_HOLD_S, default=0.0)
        if min_hold_s > 0.0 and mode != "threshold":
            msg = f"{key}.min_hold_s: only a threshold gripper (open or closed) is held; set mode: threshold or 0.0"
            raise RuntimeConfigError(msg)
        if min_hold_s > 0.0 and name in trajectory_joints:
            msg = (f"{key}.min_hold_s: {name!r} is on a joint_trajectory controller, whose path is planned ahead; "
                   "the hold applies to a gripper on a forward_command controller (or set 0.0)")
            raise RuntimeConfigError(msg)
        grippers.append(GripperConfig(
            joint=name, mode=mode, threshold=reader.real(f"{key}.threshold", low=0.0, high=1.0, default=0.5),
            open_position=opened, closed_position=closed, min_hold_s=min_hold_s))
    return tuple(grippers)


def _read_rates(reader: ParameterReader) -> RatesConfig:
    inference = reader.real("rates.inference_rate_hz", low=0.0, high=MAX_INFERENCE_RATE_HZ, low_open=True)
    rates = RatesConfig(
        inference_rate_hz=inference,
        control_rate_hz=reader.real("rates.control_rate_hz", low=0.0, high=MAX_RATE_HZ, low_open=True),
        chunk_step_hz=reader.real(
            "rates.chunk_step_hz", low=0.0, high=MAX_RATE_HZ, low_open=True, default=PAPER_CHUNK_STEP_HZ
        ),
        foresight_rate_hz=reader.real(
            "rates.foresight_rate_hz", low=0.0, high=inference, low_open=True, default=inference
        ),
        foresight_preview_rate_hz=reader.real("rates.foresight_preview_rate_hz", low=0.0, high=inference, default=0.0),
    )
    if rates.control_rate_hz < rates.inference_rate_hz:
        msg = (
            f"rates.control_rate_hz: {rates.control_rate_hz} must be at least "
            f"rates.inference_rate_hz ({rates.inference_rate_hz})"
        )
        raise RuntimeConfigError(msg)
    return rates


def _read_execution(reader: ParameterReader, dim: int) -> ExecutionConfig:
    chunk_size = reader.integer("execution.chunk_size", low=2, high=1000, default=MODEL_CHUNK_SIZE)
    action_dim = reader.integer("execution.action_dim", low=1, high=1000, default=MODEL_ACTION_DIM)
    if action_dim < dim:
        msg = f"execution.action_dim: {action_dim} is smaller than the {dim} configured joints"
        raise RuntimeConfigError(msg)
    return ExecutionConfig(
        mode=reader.text("execution.mode", choices=EXECUTION_MODES),
        blend_steps=reader.integer("execution.blend_steps", low=0, high=chunk_size - 1, default=0),
        reference_steps=reader.integer("execution.reference_steps", low=1, high=chunk_size, default=chunk_size),
        chunk_size=chunk_size,
        action_dim=action_dim,
        frame_history_steps=reader.integer(
            "execution.frame_history_steps", low=0, high=1000, default=PAPER_FRAME_HISTORY_STEPS
        ),
        history_reuse_steps=reader.integer("execution.history_reuse_steps", low=0, high=1000, default=0),
        rtc=RtcConfig(
            beta=reader.real("rtc.beta", low=0.0, high=RTC_MAX_BETA, default=RtcConfig.beta),
            schedule=reader.text("rtc.schedule", choices=RTC_SCHEDULES, default=RtcConfig.schedule),
            execution_horizon=reader.integer("rtc.execution_horizon", low=0, high=chunk_size - 1, default=0),
        ),
    )


def _check_timing(rates: RatesConfig, execution: ExecutionConfig) -> None:
    chunk_duration_s = (execution.chunk_size - 1) / rates.chunk_step_hz
    if execution.mode != "reference" and 1.0 / rates.inference_rate_hz >= chunk_duration_s:
        msg = (
            f"rates.inference_rate_hz: {rates.inference_rate_hz} Hz re-plans less often than a chunk lasts "
            f"({chunk_duration_s:.3f} s); allowed > {1.0 / chunk_duration_s:.3f} Hz"
        )
        raise RuntimeConfigError(msg)
