"""A rosbags typestore that knows ROS 2 Jazzy's messages and this package's own interfaces."""

from __future__ import annotations

import functools
from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from internvla_ros.paths import share_dir

PACKAGE = "internvla_ros"
OWN_MESSAGES = ("ActionChunk", "PolicyStatus")


def msg_dir() -> Path:
    """msg/ of a source checkout or of an installed share directory."""
    return share_dir() / "msg"


@functools.cache
def typestore() -> Typestore:
    """Jazzy's standard types plus internvla_ros/msg/ActionChunk and PolicyStatus (from their .msg files)."""
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in OWN_MESSAGES:
        path = msg_dir() / f"{name}.msg"
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store
