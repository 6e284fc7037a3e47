"""ROS-free checks of a camera image's fields and of the decoded array.

Shared by the node (rclpy messages) and the bag replay (rosbags messages): both carry the same
``encoding``/``height``/``width``/``step``/``data`` fields, so the checks read only those.
"""

from __future__ import annotations

from typing import Any

BYTES_PER_PIXEL = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}
SUPPORTED_ENCODINGS = tuple(BYTES_PER_PIXEL)


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
