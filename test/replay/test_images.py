"""Camera messages from a bag (rosbags dataclasses) -> RGB arrays, with the node's checks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from internvla_ros.runtime.images import ImageError
from internvla_ros.runtime.images import decode_rgb as to_rgb

TYPES = get_typestore(Stores.ROS2_JAZZY).types
HEADER = TYPES["std_msgs/msg/Header"](stamp=TYPES["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id="")


def _image(pixels: np.ndarray, encoding: str = "rgb8", step: int | None = None) -> object:
    height, width = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    return TYPES["sensor_msgs/msg/Image"](header=HEADER, height=height, width=width, encoding=encoding, is_bigendian=0,
                                          step=width * channels if step is None else step, data=pixels.ravel())


def test_raw_encodings_become_rgb() -> None:
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(to_rgb(_image(rgb)), rgb)
    assert np.array_equal(to_rgb(_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8")), rgb)
    assert to_rgb(_image(np.zeros((2, 3), np.uint8), "mono8")).shape == (2, 3, 3)


def test_compressed_png_becomes_rgb() -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (4, 5, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", rgb[..., ::-1])
    assert ok
    message = TYPES["sensor_msgs/msg/CompressedImage"](header=HEADER, format="png", data=data.ravel())
    assert np.array_equal(to_rgb(message), rgb)


@pytest.mark.parametrize(("message", "reason"), [
    (_image(np.zeros((2, 3, 3), np.uint8), "yuv422"), "unsupported encoding 'yuv422'"),
    (_image(np.zeros((2, 3, 3), np.uint8), step=10), "step 10 does not match width 3"),
    (_image(np.zeros((0, 3, 3), np.uint8)), "empty image"),
    (TYPES["sensor_msgs/msg/CompressedImage"](header=HEADER, format="jpeg", data=np.zeros(0, np.uint8)),
     "empty compressed image"),
    (TYPES["sensor_msgs/msg/CompressedImage"](header=HEADER, format="jpeg", data=np.ones(16, np.uint8)),
     "cannot decode the compressed (jpeg) image"),
])
def test_bad_images_are_named(message: object, reason: str) -> None:
    with pytest.raises(ImageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        to_rgb(message)
