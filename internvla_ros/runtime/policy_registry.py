"""Policies the inference worker may build, by name: the `internvla_ros.policies` entry-point group.

A node parameter that named any importable `module:function` would let anyone on the ROS graph make
the node import code. Names are looked up among the installed packages' entry points instead, so only
what an installed package declares can run (this package declares the neural policy and the analytic
test policies in resource/entry_points.txt; another package adds its own in its packaging).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from internvla_ros.runtime.errors import PolicyRuntimeError

POLICY_GROUP = "internvla_ros.policies"
NEURAL_POLICY = "internvla"


class UnknownPolicyError(PolicyRuntimeError):
    """The name is not registered in the policy entry-point group."""


def registered_policies() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=POLICY_GROUP)}


def policy_entry(name: str) -> EntryPoint:
    """The entry point for ``name``; an error lists the registered names and how to add one."""
    registered = registered_policies()
    if name not in registered:
        known = ", ".join(sorted(registered)) or "none: is internvla_ros installed (pip install -e .)?"
        raise UnknownPolicyError(
            f"policy '{name}' is not registered in the '{POLICY_GROUP}' entry-point group (registered: {known}); "
            f"a new policy is added through its package's entry points, not by a module path")
    return registered[name]


def load_policy_factory(name: str) -> Callable[..., Any]:
    return policy_entry(name).load()
