"""sensor_msgs Image / CompressedImage -> RGB uint8 arrays, through a maintained library.

cv_bridge is used where the system ROS install has it; otherwise rosbags-image, which does the same
conversions without ROS. Either way the message is checked first, so that a wrong size, a step that
does not match the width, an empty image or an unknown encoding becomes an ImageError that names the
problem instead of a garbled array.
"""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import CompressedImage, Image

try:  # a system ROS 2 install
    from cv_bridge import CvBridge

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:  # PyPI wheels: rosbags-image
    _BRIDGE = None
    from rosbags.image import ImageConversionError, ImageFormatError, message_to_cvimage

BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)


class ImageError(ValueError):
    """An image message that cannot be used as a camera frame; the message says why and what to fix."""


def check_image(msg: Image) -> None:
    """Raises ImageError unless msg is a non-empty, consistent image in a supported encoding."""
    if msg.encoding not in BYTES_PER_PIXEL:
        raise ImageError(f"unsupported encoding '{msg.encoding}'; publish one of {', '.join(SUPPORTED_ENCODINGS)}")
    if msg.height == 0 or msg.width == 0:
        raise ImageError(f"empty image ({msg.height}x{msg.width})")
    row = msg.width * BYTES_PER_PIXEL[msg.encoding]
    if msg.step != row:
        raise ImageError(f"step {msg.step} does not match width {msg.width} x {BYTES_PER_PIXEL[msg.encoding]} bytes "
                         f"({msg.encoding}) = {row}; padded rows are not supported")
    if len(msg.data) != msg.step * msg.height:
        raise ImageError(f"data holds {len(msg.data)} bytes, step x height = {msg.step * msg.height}")


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
    except (AssertionError, ImageConversionError, ImageFormatError, ValueError) as err:
        kind = f"compressed ({msg.format})" if isinstance(msg, CompressedImage) else msg.encoding
        raise ImageError(f"cannot decode the {kind} image: {err or 'not a valid image'}") from err
    if rgb is None or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
        raise ImageError(f"decoded to shape {None if rgb is None else rgb.shape}, expected (H, W, 3)")
    return np.array(rgb, dtype=np.uint8, copy=True)
