"""A rosbags typestore that knows ROS 2 Jazzy's messages and this package's own interfaces."""

from __future__ import annotations

from pathlib import Path

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

from internvla_ros.paths import PACKAGE, share_dir

OWN_MESSAGES = ("ActionChunk", "PolicyStatus")
ACTION_CHUNK = f"{PACKAGE}/msg/ActionChunk"
POLICY_STATUS = f"{PACKAGE}/msg/PolicyStatus"


def msg_dir() -> Path:
    """msg/ of a source checkout or of an installed share directory."""
    return share_dir() / "msg"


def typestore() -> Typestore:
    """Jazzy's standard types plus internvla_ros/msg/ActionChunk and PolicyStatus (from their .msg files).

    A new store each call: readers register the types they find in a bag into the store they are given.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    types = {}
    for name in OWN_MESSAGES:
        path = msg_dir() / f"{name}.msg"
        types.update(get_types_from_msg(path.read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store
