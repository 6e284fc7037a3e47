"""Camera frames to and from mp4 with PyAV, one frame at a time (bags larger than memory stream through).

Default encoding: H.264 (libx264), 4:4:4 chroma, CRF 0. That is lossless in YCbCr, so a decoded frame
differs from the recorded RGB only by the colour-space round trip: at most 2 levels of 255 per channel
(measured; :data:`CODEC_TOLERANCE`). ``av1`` (SVT-AV1, 4:2:0, CRF 30, GOP 2) is LeRobot's own default:
about half the size and a lossy one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from internvla_ros.learning.dataset_layout import DatasetError, VideoSpec

CODEC_TOLERANCE = 2
"""Max abs difference (of 255) between a recorded and a decoded frame with the default ``h264`` setting."""


@dataclass(frozen=True)
class VideoCodec:
    name: str  # the LeRobot info name
    encoder: str  # the FFmpeg encoder
    pix_fmt: str
    options: dict[str, str]


CODECS: dict[str, VideoCodec] = {
    "h264": VideoCodec("h264", "libx264", "yuv444p", {"crf": "0", "g": "30"}),
    "av1": VideoCodec("av1", "libsvtav1", "yuv420p", {"crf": "30", "g": "2"}),
}


def even(value: int) -> int:
    """4:2:0 needs even sides; rounding up keeps the whole picture."""
    return value + value % 2


class VideoTrack:
    """One camera's mp4: opened at its first frame (which fixes the size unless ``size`` is given), frames
    appended in order.

    A frame of another size (a camera reconfigured mid-recording) is resized to the track's size and
    counted in ``resized``.
    """

    def __init__(self, path: Path, fps: float, codec: VideoCodec, size: tuple[int, int] | None = None) -> None:
        self.path = path
        self._size = size  # (height, width) for every frame, e.g. the camera's earlier files'; else the first frame's
        self.fps = fps
        self.codec = codec
        self.frames = 0
        self.resized = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.video.stream.VideoStream | None = None
        self.spec: VideoSpec | None = None

    def _open(self, height: int, width: int) -> None:
        if self.codec.pix_fmt == "yuv420p":
            height, width = even(height), even(width)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        stream = self._container.add_stream(self.codec.encoder, rate=Fraction(self.fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, self.codec.pix_fmt
        stream.options = dict(self.codec.options)
        self._stream = stream
        self.spec = VideoSpec(height=height, width=width, codec=self.codec.name, pix_fmt=self.codec.pix_fmt,
                              fps=self.fps)

    def add(self, rgb: np.ndarray) -> None:
        if self._stream is None:
            self._open(*(self._size or rgb.shape[:2]))
        assert self._stream is not None and self._container is not None and self.spec is not None
        if rgb.shape[:2] != (self.spec.height, self.spec.width):
            rgb = cv2.resize(rgb, (self.spec.width, self.spec.height), interpolation=cv2.INTER_AREA)
            self.resized += 1
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._stream is not None and self._container is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
            self._container.close()
            self._stream = self._container = None


def decode_frames(path: Path) -> Iterator[np.ndarray]:
    """Every frame of an mp4 as (H, W, 3) uint8 RGB, in order."""
    return (frame.to_ndarray(format="rgb24") for frame in decoded(path))


def decoded(path: Path) -> Iterator[av.VideoFrame]:
    """Every frame of an mp4, decoded but not yet converted (the conversion to RGB costs most of the time)."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as err:
        raise DatasetError(f"{path}: cannot open the video ({err})") from err
    with container:
        yield from container.decode(video=0)


def count_frames(path: Path) -> int:
    return sum(1 for _ in decoded(path))
