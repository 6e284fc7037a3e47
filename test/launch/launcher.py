"""Starts a launch plan's nodes as processes, with the command line launch_ros builds for each node.

launch_ros is not installable here, so the launch files cannot run; what they start is the plan of
internvla_ros.launch_plan, and launch_ros turns each NodePlan into
`EXE --ros-args -r __node:=NAME -r __ns:=/NS --params-file FILE... --params-file OVERRIDES -r FROM:=TO...`,
where OVERRIDES is the parameter dict written as a YAML file keyed by the node's full name
(launch_ros' Node._create_params_file_from_dict). EXE is the script CMakeLists.txt installs as
lib/internvla_ros/<executable> (rendered from cmake/entry_point.py.in), run by this interpreter.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from internvla_ros.launch_plan import PACKAGE, NodePlan

ROOT = Path(__file__).resolve().parents[2]
ENTRY_TEMPLATE = ROOT / "cmake" / "entry_point.py.in"
ENTRY_POINT = re.compile(r'"(\w+)=([\w.]+)"')


def entry_points() -> dict[str, str]:
    """executable -> module, as CMakeLists.txt installs them."""
    return dict(ENTRY_POINT.findall((ROOT / "CMakeLists.txt").read_text()))


def install_executable(executable: str, prefix: Path) -> Path:
    """The script `ros2 run internvla_ros <executable>` would run, written under ``prefix``/lib/internvla_ros."""
    modules = entry_points()
    if executable not in modules:
        msg = f"CMakeLists.txt installs no executable {executable!r}; it installs {sorted(modules)}"
        raise LookupError(msg)
    text = (ENTRY_TEMPLATE.read_text().replace("@PROJECT_NAME@", PACKAGE).replace("@ENTRY_NAME@", executable)
            .replace("@ENTRY_MODULE@", modules[executable]))
    path = prefix / "lib" / PACKAGE / executable
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def absolute_namespace(namespace: str) -> str:
    return namespace if namespace.startswith("/") else f"/{namespace}"


def full_name(node: NodePlan) -> str:
    return f"{absolute_namespace(node.namespace)}/{node.name}" if node.namespace else f"/{node.name}"


def ros_arguments(node: NodePlan, overrides_file: Path) -> list[str]:
    """launch_ros' arguments for ``node``; writes its parameter dict to ``overrides_file``."""
    arguments = ["--ros-args", "-r", f"__node:={node.name}"]
    if node.namespace:
        arguments += ["-r", f"__ns:={absolute_namespace(node.namespace)}"]
    for path in node.parameter_files:
        arguments += ["--params-file", str(path)]
    if node.parameters:
        overrides_file.write_text(yaml.dump({full_name(node): {"ros__parameters": dict(node.parameters)}}))
        arguments += ["--params-file", str(overrides_file)]
    for source, target in node.remappings:
        arguments += ["-r", f"{source}:={target}"]
    return arguments


class LaunchedNode:
    """One planned node as a process, its output in a log file."""

    def __init__(self, node: NodePlan, directory: Path) -> None:
        self.plan = node
        stem = full_name(node).strip("/").replace("/", "_")
        self.log_path = directory / f"{stem}.log"
        self.command = [sys.executable, str(install_executable(node.executable, directory / "install")),
                        *ros_arguments(node, directory / f"{stem}_parameters.yaml")]
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def output(self) -> str:
        return self.log_path.read_text()

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGINT, as launch sends first on shutdown; SIGKILL if it does not end."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def launch(nodes: tuple[NodePlan, ...], directory: Path) -> list[LaunchedNode]:
    directory.mkdir(parents=True, exist_ok=True)
    return [LaunchedNode(node, directory) for node in nodes]
