"""sensor_msgs Image / CompressedImage -> RGB uint8 arrays, through a maintained library.

cv_bridge is used where the system ROS install has it; otherwise rosbags-image, which does the same
conversions without ROS. Either way :func:`internvla_ros.runtime.images.decode_rgb` checks the message
first, so that a wrong size, a step that does not match the width, an empty image or an unknown
encoding becomes an ImageError that names the problem instead of a garbled array.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

from internvla_ros.runtime.images import ImageError, decode_rgb

__all__ = ["ImageError", "to_rgb"]

try:  # a system ROS 2 install
    from cv_bridge import CvBridge, CvBridgeError

    _BRIDGE: CvBridge | None = CvBridge()
    _BRIDGE_ERRORS: tuple[type[Exception], ...] = (CvBridgeError,)
except ImportError:  # PyPI wheels: rosbags-image
    _BRIDGE = None
    _BRIDGE_ERRORS = ()


def _bridge_rgb(bridge: CvBridge, msg: Image | CompressedImage) -> Any:
    if isinstance(msg, Image):
        return bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    return bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")


def to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """The image as an (H, W, 3) uint8 RGB array (a new array, safe to keep)."""
    if _BRIDGE is None:
        return decode_rgb(msg)
    return decode_rgb(msg, convert=partial(_bridge_rgb, _BRIDGE), errors=_BRIDGE_ERRORS)
