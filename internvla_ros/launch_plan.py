"""What each launch file in launch/ starts, as plain data; the launch files only hand it to launch_ros.

No launch, launch_ros or rclpy import here: launch_ros is not installable on every machine, and the same
plan can then be checked, and started as plain processes with the `--ros-args` launch_ros would pass.
Every value a user types (`config:=`, `namespace:=`, ...) is checked and resolved here in Python: no
launch substitution evaluates it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from internvla_ros.paths import config_path, share_dir

PACKAGE = "internvla_ros"
POLICY_EXECUTABLE = "policy_node"
SIM_EXECUTABLE = "sim_robot"
POLICY_NODE_NAME = "policy_node"
SIM_NODE_NAME = "sim_robot"
COMPRESSED_SUFFIX = "/compressed"
DEFAULT_CELL = "dual_arm"

# The camera names of each shipped cell config (config/<cell>.yaml, cameras.names).
CELL_CAMERAS: dict[str, tuple[str, ...]] = {
    "dual_arm": ("head", "left_wrist", "right_wrist"),
    "conveyor_sorting": ("head", "wrist"),
}
NAMESPACE_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
BOOLEANS = {"true": True, "false": False}

ParameterValue = bool | int | float | str


class LaunchPlanError(ValueError):
    """A launch argument that cannot be used; the message names it and what to pass instead."""


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchFile:
    """One file in launch/: its cell (or the `cell:=` argument), whether it starts the sim, its defaults."""

    name: str
    cell: str | None = None  # None: chosen by cell:=
    with_sim: bool = False
    defaults: Mapping[str, str] = field(default_factory=dict)


LAUNCH_FILES: dict[str, LaunchFile] = {launch.name: launch for launch in (
    LaunchFile("dual_arm.launch.py", cell="dual_arm"),
    LaunchFile("conveyor_sorting.launch.py", cell="conveyor_sorting"),
    # The sim is the robot: it moves only when the node actuates.
    LaunchFile("sim.launch.py", with_sim=True, defaults={"dry_run": "false"}),
    # For `ros2 bag play --clock`.
    LaunchFile("replay.launch.py", defaults={"use_sim_time": "true"}),
)}


@dataclass(frozen=True)
class NodePlan:
    """One node to start: what launch_ros' Node (or LifecycleNode) takes."""

    executable: str
    name: str
    namespace: str | None  # None: none (launch_ros then applies an enclosing PushROSNamespace)
    parameter_files: tuple[Path, ...]
    parameters: Mapping[str, ParameterValue]  # applied after the files
    remappings: tuple[tuple[str, str], ...]
    lifecycle: bool = False


def camera_topic(camera: str) -> str:
    """The node's relative image topic for a camera (what the camera launch arguments remap)."""
    return f"cameras/{camera}/image_raw"


def camera_argument(camera: str) -> str:
    return f"{camera}_camera"


def _cameras(launch: LaunchFile) -> tuple[str, ...]:
    if launch.cell is not None:
        return CELL_CAMERAS[launch.cell]
    return tuple(dict.fromkeys(camera for cameras in CELL_CAMERAS.values() for camera in cameras))


def _camera_description(camera: str, launch: LaunchFile) -> str:
    text = f"image topic of the {camera} camera (its /compressed topic follows)"
    if launch.cell is None:
        cells = [cell for cell, cameras in CELL_CAMERAS.items() if camera in cameras]
        text += f"; cells {', '.join(cells)}"
    return text


def launch_arguments(launch: LaunchFile) -> tuple[LaunchArgument, ...]:
    """Every argument the launch file declares, with its default and description (README lists them too)."""
    arguments = []
    if launch.cell is None:
        arguments.append(LaunchArgument("cell", DEFAULT_CELL, "robot cell: picks the default config and the cameras",
                                        tuple(CELL_CAMERAS)))
    config_default = f"{launch.cell}.yaml" if launch.cell else ""
    arguments += [
        LaunchArgument("model", "", "checkpoint directory (model.safetensors, config.json, stats.json); "
                       "empty: the package's default model"),
        LaunchArgument("config", config_default, "robot parameter file: a name in the package's config/ or a "
                       "path" + ("" if launch.cell else "; empty: <cell>.yaml")),
        LaunchArgument("params_file", "", "extra parameter file for the policy node, applied after config "
                       "(e.g. tokenizer_path, backend, inference_threads)"),
        LaunchArgument("namespace", "", "namespace of the nodes and all their relative topics"),
        LaunchArgument("use_sim_time", "false", "use /clock (true for `ros2 bag play --clock`)"),
        LaunchArgument("dry_run", "", "true: compute everything, publish no command; empty: the config's "
                       "safety.dry_run"),
        LaunchArgument("autostart", "true", "configure and activate the lifecycle node at start"),
        LaunchArgument("instruction", "", "initial instruction (also settable on the instruction topic)"),
    ]
    arguments += [LaunchArgument(camera_argument(c), camera_topic(c), _camera_description(c, launch))
                  for c in _cameras(launch)]
    return tuple(_with_default(a, launch.defaults.get(a.name)) for a in arguments)


def _with_default(argument: LaunchArgument, default: str | None) -> LaunchArgument:
    if default is None:
        return argument
    return LaunchArgument(argument.name, default, argument.description, argument.choices)


def parse_bool(name: str, value: str) -> bool:
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        msg = f"{name}:={value} is not a boolean; pass {name}:=true or {name}:=false"
        raise LaunchPlanError(msg) from None


def normalize_namespace(value: str) -> str | None:
    """`cell_2`, `/cell_2/`, `/plant/cell_2` -> without the trailing slash; empty or `/` -> None."""
    text = value.strip()
    tokens = [t for t in text.split("/") if t]
    if not tokens:
        return None
    if "//" in text.rstrip("/") or not all(NAMESPACE_TOKEN.fullmatch(t) for t in tokens):
        msg = (f"namespace:={value} is not a ROS namespace: use letters, digits and '_' between single '/', "
               "not starting with a digit, e.g. namespace:=cell_2")
        raise LaunchPlanError(msg)
    return ("/" if text.startswith("/") else "") + "/".join(tokens)


def resolve_config(value: str) -> Path:
    """A name in the package's config/ or a path (relative to the working directory), made absolute."""
    path = config_path(value.strip())
    if not path.is_file():
        msg = (f"config:={value}: no such file, neither as a path nor in {share_dir() / 'config'}; "
               f"pass a name such as {next(iter(CELL_CAMERAS))}.yaml or a path to a robot parameter file")
        raise LaunchPlanError(msg)
    return path.resolve()


def _existing(name: str, value: str, kind: str) -> Path:
    path = Path(value.strip()).expanduser().resolve()
    exists = path.is_dir() if kind == "directory" else path.is_file()
    if not exists:
        msg = f"{name}:={value}: no such {kind} ({path})"
        raise LaunchPlanError(msg)
    return path


def _topic(name: str, value: str) -> str:
    topic = value.strip()
    if not topic or any(c.isspace() for c in topic) or topic.endswith("/"):
        msg = f"{name}:={value} is not a topic name, e.g. {name}:=/head/image_raw"
        raise LaunchPlanError(msg)
    return topic


def _values(launch: LaunchFile, given: Mapping[str, str]) -> dict[str, str]:
    declared = {a.name: a for a in launch_arguments(launch)}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        msg = f"{launch.name} has no argument {', '.join(unknown)}; it takes {', '.join(declared)}"
        raise LaunchPlanError(msg)
    values = {name: str(given.get(name, a.default)) for name, a in declared.items()}
    for name, argument in declared.items():
        if argument.choices and values[name].strip().lower() not in argument.choices:
            msg = f"{name}:={values[name]} is not one of {', '.join(argument.choices)}"
            raise LaunchPlanError(msg)
    return values


def _camera_remaps(launch: LaunchFile, cell: str, values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    remaps: list[tuple[str, str]] = []
    for camera in _cameras(launch):
        name = camera_argument(camera)
        value = values[name].strip()
        if value == camera_topic(camera):
            continue
        if camera not in CELL_CAMERAS[cell]:
            msg = f"{name}:= is for another cell; cell:={cell} has cameras {', '.join(CELL_CAMERAS[cell])}"
            raise LaunchPlanError(msg)
        target = _topic(name, value)
        remaps.append((camera_topic(camera), target))
        remaps.append((camera_topic(camera) + COMPRESSED_SUFFIX, target + COMPRESSED_SUFFIX))
    return tuple(remaps)


def plan_nodes(launch: LaunchFile, given: Mapping[str, str]) -> tuple[NodePlan, ...]:
    """The nodes ``launch`` starts for these argument values (undeclared names are refused, missing ones default).

    ``plan_nodes(LAUNCH_FILES["sim.launch.py"], {"cell": "conveyor_sorting"})`` gives sim_robot and the
    policy node, both on config/conveyor_sorting.yaml.
    """
    values = _values(launch, given)
    cell = launch.cell or values["cell"].strip().lower()
    config = resolve_config(values["config"].strip() or f"{cell}.yaml")
    namespace = normalize_namespace(values["namespace"])
    use_sim_time = parse_bool("use_sim_time", values["use_sim_time"])
    remaps = _camera_remaps(launch, cell, values)
    files = [config]
    if values["params_file"].strip():
        files.append(_existing("params_file", values["params_file"], "file"))
    parameters: dict[str, ParameterValue] = {
        "use_sim_time": use_sim_time, "autostart": parse_bool("autostart", values["autostart"])}
    if values["model"].strip():
        parameters["model_path"] = str(_existing("model", values["model"], "directory"))
    if values["dry_run"].strip():
        parameters["safety.dry_run"] = parse_bool("dry_run", values["dry_run"])
    if values["instruction"].strip():
        parameters["instruction"] = values["instruction"].strip()
    policy = NodePlan(POLICY_EXECUTABLE, POLICY_NODE_NAME, namespace, tuple(files), parameters, remaps,
                      lifecycle=True)
    if not launch.with_sim:
        return (policy,)
    # sim_robot reads the robot file named by its `config` parameter (the file's block is the policy node's).
    sim = NodePlan(SIM_EXECUTABLE, SIM_NODE_NAME, namespace, (),
                   {"config": str(config), "config_node_name": POLICY_NODE_NAME, "use_sim_time": use_sim_time},
                   remaps)
    return (sim, policy)
