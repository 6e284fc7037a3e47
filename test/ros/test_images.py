"""Camera message conversion: every supported encoding, compressed images, and clear refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from internvla_ros.ros.images import ImageError, to_rgb

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)


def image(pixels: np.ndarray, encoding: str, step: int | None = None) -> Image:
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding)
    msg.step = step if step is not None else pixels.shape[1] * (pixels.shape[2] if pixels.ndim == 3 else 1)
    msg.data = pixels.tobytes()
    return msg


@pytest.mark.parametrize(("encoding", "pixels"), [
    ("rgb8", RGB),
    ("bgr8", RGB[..., ::-1].copy()),
    ("rgba8", np.concatenate([RGB, np.full((6, 5, 1), 255, np.uint8)], axis=2)),
    ("bgra8", np.concatenate([RGB[..., ::-1], np.full((6, 5, 1), 7, np.uint8)], axis=2)),
])
def test_colour_encodings_convert_to_rgb(encoding: str, pixels: np.ndarray) -> None:
    np.testing.assert_array_equal(to_rgb(image(pixels, encoding)), RGB)


def test_mono8_is_replicated_to_three_channels() -> None:
    grey = RGB[..., 0].copy()
    out = to_rgb(image(grey, "mono8"))
    assert out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out[..., 1], grey)


def test_compressed_png_round_trips_exactly() -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format="rgb8; png compressed bgr8")
    msg.data = png.tobytes()
    np.testing.assert_array_equal(to_rgb(msg), RGB)


@pytest.mark.parametrize(("msg", "problem"), [
    (image(RGB, "yuv422"), "unsupported encoding 'yuv422'"),
    (image(RGB[:0], "rgb8"), "empty image"),
    (image(RGB, "rgb8", step=16), "step 16 does not match width 5"),
    (image(RGB[:3], "rgb8", step=15), "data holds"),
])
def test_bad_images_are_refused_with_the_reason(msg: Image, problem: str) -> None:
    if problem == "data holds":
        msg.height = 6  # claims 6 rows but carries 3
    with pytest.raises(ImageError, match=problem):
        to_rgb(msg)


def test_corrupt_compressed_image_is_refused() -> None:
    msg = CompressedImage(format="jpeg")
    msg.data = b"\xff\xd8 definitely not a jpeg"
    with pytest.raises(ImageError, match="cannot decode the compressed"):
        to_rgb(msg)
