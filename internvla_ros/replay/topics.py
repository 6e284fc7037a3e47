"""The node's topic names, resolved the way rcl resolves them: namespace, private names and remaps.

The robot config gives relative names (``joint_states``, ``cameras/head/image_raw``); the node lives in
a namespace and may be started with ``-r FROM:=TO`` remaps. The replay takes the same two inputs, so a
bag recorded under ``/cell_2`` is read with ``--namespace /cell_2`` and written with the names the
node would have used there.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from internvla_ros.replay.errors import ReplayError
from internvla_ros.runtime.config import RuntimeConfig

NODE_NAME = "policy_node"
JOINT_STATES = "joint_states"
INSTRUCTION = "instruction"
ACTION_CHUNK = "~/action_chunk"
STATUS = "~/status"
COMPRESSED_SUFFIX = "/compressed"
REMAP_SEPARATOR = ":="


def _clean(name: str) -> str:
    parts = [p for p in name.split("/") if p]
    return "/" + "/".join(parts)


def normalize_namespace(namespace: str) -> str:
    if not namespace.strip():
        return "/"
    return _clean(namespace.strip())


def resolve(name: str, namespace: str, node: str = NODE_NAME) -> str:
    """``x`` -> ``/ns/x``, ``~/x`` -> ``/ns/node/x``, ``/x`` stays."""
    name = name.strip()
    if not name or name in ("~", "/"):
        msg = f"'{name}' is not a topic name"
        raise ReplayError(msg)
    base = normalize_namespace(namespace)
    if name.startswith("/"):
        return _clean(name)
    if name.startswith("~"):
        return _clean(f"{base}/{node}/{name[1:]}")
    return _clean(f"{base}/{name}")


def parse_remaps(rules: Sequence[str], namespace: str) -> dict[str, str]:
    """``FROM:=TO`` rules with both sides resolved, as rcl matches them (on the resolved name)."""
    remaps: dict[str, str] = {}
    for rule in rules:
        source, sep, target = rule.partition(REMAP_SEPARATOR)
        if not sep or not source.strip() or not target.strip():
            msg = f"--remap '{rule}': expected FROM:=TO, e.g. joint_states:=/robot/joint_states"
            raise ReplayError(msg)
        remaps[resolve(source, namespace)] = resolve(target, namespace)
    return remaps


@dataclass(frozen=True)
class TopicMap:
    """Every topic the node reads and writes, fully resolved."""

    joint_states: str
    instruction: str
    cameras: Mapping[str, str]  # camera name -> raw Image topic; CompressedImage is on <topic>/compressed
    trajectories: Mapping[str, str]  # joint_trajectory controller -> <controller>/joint_trajectory
    forward: Mapping[str, str]  # forward_command controller -> <controller>/commands
    action_chunk: str
    status: str

    @classmethod
    def from_config(cls, config: RuntimeConfig, namespace: str = "/", remaps: Sequence[str] = ()) -> TopicMap:
        rules = parse_remaps(remaps, namespace)

        def name(topic: str) -> str:
            resolved = resolve(topic, namespace)
            return rules.get(resolved, resolved)

        return cls(
            joint_states=name(JOINT_STATES),
            instruction=name(INSTRUCTION),
            cameras={c.name: name(c.topic) for c in config.cameras},
            trajectories={c.name: name(f"{c.name}/joint_trajectory") for c in config.controllers
                          if c.type == "joint_trajectory"},
            forward={c.name: name(f"{c.name}/commands") for c in config.controllers if c.type == "forward_command"},
            action_chunk=name(ACTION_CHUNK),
            status=name(STATUS),
        )

    def compressed(self, camera: str) -> str:
        return self.cameras[camera] + COMPRESSED_SUFFIX

    def inputs(self) -> list[str]:
        """The input topics, for messages that list what the config expects."""
        cameras = [f"{t} (or {t}{COMPRESSED_SUFFIX})" for t in self.cameras.values()]
        return [self.joint_states, *cameras]

    def missing_inputs(self, present: Collection[str]) -> list[str]:
        """The inputs absent from ``present`` (a camera is there as raw Image or on its /compressed topic)."""
        missing = [] if self.joint_states in present else [self.joint_states]
        return missing + [topic for camera, topic in self.cameras.items()
                          if topic not in present and self.compressed(camera) not in present]


def input_namespaces(config: RuntimeConfig, present: Collection[str], remaps: Sequence[str] = ()) -> list[str]:
    """Every namespace in which ``present`` holds all the node's inputs (joint_states and each camera).

    Candidates are the prefixes of the bag's topics before a name the node reads, so a recording of
    the node in ``/cell_2`` yields ``/cell_2``; each is checked with the remaps applied.
    """
    relative = [JOINT_STATES]
    for camera in config.cameras:
        relative += [camera.topic, camera.topic + COMPRESSED_SUFFIX]
    suffixes = ["/" + name.strip("/") for name in relative if not name.startswith("/")]
    candidates = {"/"} | {topic[: -len(suffix)] or "/" for topic in present for suffix in suffixes
                          if topic.endswith(suffix)}
    return sorted(namespace for namespace in candidates
                  if not TopicMap.from_config(config, namespace, remaps).missing_inputs(present))
