"""ROS-free decoding of camera messages to RGB arrays, with checks of the fields and of the result.

Shared by the node (rclpy messages) and the bag replay (rosbags messages): both carry the same
``encoding``/``height``/``width``/``step``/``data`` fields (``format``/``data`` when compressed), so
the checks read only those, and rosbags-image decodes either kind without ROS.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from rosbags.image import ImageConversionError, ImageFormatError, message_to_cvimage

BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)
DECODE_ERRORS: tuple[type[Exception], ...] = (AssertionError, ValueError, cv2.error, ImageConversionError,
                                              ImageFormatError)
"""What decoding raises on bytes that are not the image the fields describe."""


class ImageError(ValueError):
    """An image message that cannot be used as a camera frame; the message says why and what to fix."""


def check_image_fields(encoding: str, height: int, width: int, step: int, size: int) -> None:
    """Raises ImageError unless the fields describe a non-empty, unpadded image in a supported encoding."""
    if encoding not in BYTES_PER_PIXEL:
        raise ImageError(f"unsupported encoding '{encoding}'; publish one of {', '.join(SUPPORTED_ENCODINGS)}")
    if height == 0 or width == 0:
        raise ImageError(f"empty image ({height}x{width})")
    row = width * BYTES_PER_PIXEL[encoding]
    if step != row:
        raise ImageError(f"step {step} does not match width {width} x {BYTES_PER_PIXEL[encoding]} bytes "
                         f"({encoding}) = {row}; padded rows are not supported")
    if size != step * height:
        raise ImageError(f"data holds {size} bytes, step x height = {step * height}")


def check_rgb(rgb: Any) -> None:
    """Raises ImageError unless a decoded image is a non-empty (H, W, 3) array."""
    shape = getattr(rgb, "shape", None)
    if shape is None or len(shape) != 3 or shape[2] != 3 or rgb.size == 0:
        raise ImageError(f"decoded to shape {shape}, expected (H, W, 3)")


def _rosbags_rgb(msg: Any) -> Any:
    return message_to_cvimage(msg, "rgb8")


def decode_rgb(msg: Any, convert: Callable[[Any], Any] = _rosbags_rgb,
               errors: tuple[type[Exception], ...] = ()) -> np.ndarray:
    """An Image or CompressedImage (rclpy or rosbags message) as an (H, W, 3) uint8 RGB array (a new array).

    The fields are checked first, so a wrong size, a step that does not match the width, an empty image
    or an unknown encoding becomes an ImageError that names the problem instead of a garbled array.
    ``convert`` (rosbags-image by default) turns the message into an RGB array; it raising one of
    ``DECODE_ERRORS`` or ``errors`` becomes an ImageError naming the encoding or compressed format.
    """
    compressed = hasattr(msg, "format")
    if compressed:
        if len(msg.data) == 0:
            raise ImageError("empty compressed image")
    else:
        check_image_fields(msg.encoding, msg.height, msg.width, msg.step, len(msg.data))
    try:
        rgb = convert(msg)
    except (*DECODE_ERRORS, *errors) as err:
        kind = f"compressed ({msg.format})" if compressed else msg.encoding
        raise ImageError(f"cannot decode the {kind} image: {err or 'not a valid image'}") from err
    check_rgb(rgb)
    return np.array(rgb, dtype=np.uint8, copy=True)
