"""sensor_msgs Image / CompressedImage -> RGB uint8 arrays, through a maintained library.

cv_bridge is used where the system ROS install has it; otherwise rosbags-image, which does the same
conversions without ROS. Either way the message is checked first, so that a wrong size, a step that
does not match the width, an empty image or an unknown encoding becomes an ImageError that names the
problem instead of a garbled array.
"""

from __future__ import annotations

import numpy as np
from rosbags.image import ImageConversionError, ImageFormatError, message_to_cvimage
from sensor_msgs.msg import CompressedImage, Image

from internvla_ros.runtime.images import ImageError, check_image_fields, check_rgb

try:  # a system ROS 2 install
    from cv_bridge import CvBridge, CvBridgeError

    _BRIDGE: CvBridge | None = CvBridge()
    _BRIDGE_ERRORS: tuple[type[Exception], ...] = (CvBridgeError,)
except ImportError:  # PyPI wheels: rosbags-image
    _BRIDGE = None
    _BRIDGE_ERRORS = ()
DECODE_ERRORS = (AssertionError, ValueError, ImageConversionError, ImageFormatError, *_BRIDGE_ERRORS)


def check_image(msg: Image) -> None:
    """Raises ImageError unless msg is a non-empty, consistent image in a supported encoding."""
    check_image_fields(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))


def to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """The image as an (H, W, 3) uint8 RGB array (a new array, safe to keep)."""
    if isinstance(msg, Image):
        check_image(msg)
    elif not msg.data:
        raise ImageError("empty compressed image")
    try:
        if _BRIDGE is not None:
            if isinstance(msg, Image):
                rgb = _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
            else:
                rgb = _BRIDGE.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
        else:
            rgb = message_to_cvimage(msg, "rgb8")
    except DECODE_ERRORS as err:
        kind = f"compressed ({msg.format})" if isinstance(msg, CompressedImage) else msg.encoding
        raise ImageError(f"cannot decode the {kind} image: {err or 'not a valid image'}") from err
    check_rgb(rgb)
    return np.array(rgb, dtype=np.uint8, copy=True)
