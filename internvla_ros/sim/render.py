"""Camera images of the simulated cell, drawn with OpenCV: simple, cheap, and recognisable.

The head camera sees the whole cell from above: a table, each arm as a planar chain (joints 1, 2 and
4 of a 7-DoF arm bend it), its gripper fingers opening with the gripper joint, and either objects on
the table or parcels riding a belt that moves with the conveyor joint, and the two sorting bins. With
the sorting task (sim/task.py) the parcels are the task's, coloured by their class, and a held one sits
between the fingers. A wrist camera sees a close crop around its arm's gripper, the tip `wrist_tip_at`
of the way down the crop (the sim's `wrist_camera: {tip_at: F}`; the arm's base is below, so 0.8 looks
mostly past the tip, away from the arm, and 0.5 centres the tip). Images are RGB uint8.

OpenCV rather than MuJoCo: a head and a wrist frame together take about 2 ms here against about 70 ms
per 224x224 MuJoCo frame on these CPUs, which matters at 30 Hz beside a policy sharing two cores, and a
top-down drawing shows everything the task needs (parcels, their colours, bins, the gripper opening).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.cell import JointState
from internvla_ros.sim.layout import (
    BELT_BOTTOM,
    BELT_TOP,
    BINS,
    HEAD_SIZE,
    PARCEL_SIZE_PX,
    PIXELS_PER_METRE,
    ArmLayout,
    arm_layouts,
)
from internvla_ros.sim.task import sim_section

WRIST_SIZE = (240, 320)
WRIST_CROP = (120, 160)
WRIST_TIP_AT = 0.8  # where the gripper tip sits down the wrist image unless the sim's config says otherwise
PARCEL_SPACING_PX = 170
TABLE_RGB = (176, 150, 118)
FLOOR_RGB = (60, 64, 70)
BELT_RGB = (45, 45, 48)
BIN_RGB, BIN_RIM_RGB = (150, 150, 155), (70, 70, 75)
ARM_RGB = ((230, 120, 40), (40, 140, 230))
PARCEL_RGB = ((196, 150, 90), (170, 120, 70), (210, 180, 120))
# A parcel of the sorting task: (x, y, rgb, held) in head pixels (sim/task.py SortingTask.drawables).
Drawable = tuple[float, float, tuple[int, int, int], bool]


class CellRenderer:
    """Draws every configured camera of one cell from its joint state."""

    def __init__(self, config: RuntimeConfig, wrist_tip_at: float = WRIST_TIP_AT) -> None:
        if not 0.0 <= wrist_tip_at <= 1.0:
            msg = f"wrist_camera.tip_at must be in [0, 1] (0: the tip at the top, 1: at the bottom); got {wrist_tip_at}"
            raise ValueError(msg)
        self.config = config
        self.wrist_tip_at = wrist_tip_at
        self._arms = arm_layouts(config)
        self._belt = next((i for i, j in enumerate(config.joints) if j.state_field == "velocity"), None)
        self._gripper_range = {
            config.joint_index[g.joint]: (g.open_position, g.closed_position) for g in config.grippers}
        self._camera_arm = {}
        for camera in config.cameras:
            self._camera_arm[camera.name] = None if camera.slot == 0 else (camera.slot - 1) % max(1, len(self._arms))

    def _chain(self, arm: ArmLayout, positions: np.ndarray) -> list[tuple[float, float]]:
        return arm.chain(positions)

    def _opening(self, arm: ArmLayout, positions: np.ndarray) -> float:
        """0 closed .. 1 open."""
        if arm.gripper is None:
            return 1.0
        opened, closed = self._gripper_range[arm.gripper]
        span = opened - closed
        return float(np.clip((positions[arm.gripper] - closed) / span, 0.0, 1.0)) if span else 1.0

    def scene(self, state: JointState, parcels: list[Drawable] | None = None) -> np.ndarray:
        """The full head-camera view; ``parcels``: the sorting task's, drawn instead of the belt's decoration."""
        height, width = HEAD_SIZE
        image = np.empty((height, width, 3), np.uint8)
        image[:] = FLOOR_RGB
        cv2.rectangle(image, (20, 20), (width - 20, height - 20), TABLE_RGB, thickness=-1)
        if self._belt is not None:
            self._draw_belt(image, float(state.positions[self._belt]), decorate=parcels is None)
            for x0, y0, x1, y1 in BINS.values():
                cv2.rectangle(image, (x0, y0), (x1, y1), BIN_RGB, thickness=-1)
                cv2.rectangle(image, (x0, y0), (x1, y1), BIN_RIM_RGB, thickness=6)
            for x, y, rgb, held in parcels or []:
                if not held:
                    self._draw_parcel(image, x, y, rgb)
        else:
            cv2.rectangle(image, (250, 150), (290, 190), (200, 40, 40), thickness=-1)  # the red block
            cv2.circle(image, (400, 170), 38, (40, 70, 200), thickness=6)  # the blue bowl
        for i, arm in enumerate(self._arms):
            chain = [(round(x), round(y)) for x, y in self._chain(arm, state.positions)]
            colour = ARM_RGB[i % len(ARM_RGB)]
            cv2.polylines(image, [np.array(chain, np.int32)], isClosed=False, color=colour, thickness=14)
            for joint in chain[:-1]:
                cv2.circle(image, joint, 10, (30, 30, 30), thickness=-1)
            for x, y, rgb, held in parcels or []:
                if held:  # between the fingers, over the arm
                    self._draw_parcel(image, x, y, rgb)
            self._draw_gripper(image, chain[-2], chain[-1], self._opening(arm, state.positions))
        return image

    @staticmethod
    def _draw_parcel(image: np.ndarray, x: float, y: float, rgb: tuple[int, int, int]) -> None:
        half = PARCEL_SIZE_PX // 2
        corner = (round(x) - half, round(y) - half)
        cv2.rectangle(image, corner, (corner[0] + PARCEL_SIZE_PX, corner[1] + PARCEL_SIZE_PX), rgb, thickness=-1)
        cv2.line(image, (round(x), corner[1]), (round(x), corner[1] + PARCEL_SIZE_PX), (235, 225, 200), thickness=3)

    def _draw_belt(self, image: np.ndarray, travel_m: float, decorate: bool) -> None:
        """The belt, its slats moving with its travel; `decorate`: evenly spaced brown parcels on it."""
        width = image.shape[1]
        top, bottom = BELT_TOP, BELT_BOTTOM
        cv2.rectangle(image, (0, top), (width, bottom), BELT_RGB, thickness=-1)
        shift = int(travel_m * PIXELS_PER_METRE)
        for x in range(shift % 40, width, 40):
            cv2.line(image, (x, top), (x, bottom), (70, 70, 74), thickness=2)
        if not decorate:
            return
        for k in range(width // PARCEL_SPACING_PX + 2):
            x = (k * PARCEL_SPACING_PX + shift) % (width + PARCEL_SPACING_PX) - PARCEL_SPACING_PX // 2
            colour = PARCEL_RGB[k % len(PARCEL_RGB)]
            cv2.rectangle(image, (x, top + 20), (x + 70, bottom - 20), colour, thickness=-1)
            cv2.line(image, (x + 35, top + 20), (x + 35, bottom - 20), (235, 225, 200), thickness=4)

    @staticmethod
    def _draw_gripper(image: np.ndarray, wrist: tuple[int, int], tip: tuple[int, int], opening: float) -> None:
        direction = np.subtract(tip, wrist).astype(float)
        direction /= max(1e-6, float(np.hypot(*direction)))
        normal = np.array([-direction[1], direction[0]])
        half = 6 + 16 * opening
        for side in (-1, 1):
            base = np.array(tip) + side * half * normal
            end = base + 28 * direction
            cv2.line(image, tuple(base.astype(int)), tuple(end.astype(int)), (20, 20, 20), thickness=6)

    def render(self, camera: str, state: JointState, scene: np.ndarray | None = None) -> np.ndarray:
        """One camera's image; pass `scene` to reuse one head view for several wrist cameras."""
        scene = self.scene(state) if scene is None else scene
        arm_index = self._camera_arm[camera]
        if arm_index is None or not self._arms:
            return scene
        tip = self._chain(self._arms[arm_index], state.positions)[-1]
        crop_h, crop_w = WRIST_CROP
        height, width = scene.shape[:2]
        x0 = int(np.clip(tip[0] - crop_w / 2, 0, width - crop_w))
        y0 = int(np.clip(tip[1] - crop_h * self.wrist_tip_at, 0, height - crop_h))
        crop = scene[y0:y0 + crop_h, x0:x0 + crop_w]
        return cv2.resize(crop, (WRIST_SIZE[1], WRIST_SIZE[0]), interpolation=cv2.INTER_LINEAR)


def wrist_tip_at_from_yaml(path: str | Path) -> float:
    """`wrist_camera: {tip_at: F}` of the sim's block of a robot file (see the module's docstring);
    WRIST_TIP_AT when the file has none."""
    section = sim_section(path, "wrist_camera") or {}
    unknown = sorted(set(section) - {"tip_at"})
    if unknown:
        msg = f"{path}: sim_robot wrist_camera: unknown {unknown}; the section takes only tip_at (0-1)"
        raise ValueError(msg)
    value = section.get("tip_at", WRIST_TIP_AT)
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{path}: sim_robot wrist_camera.tip_at must be a number in [0, 1]; got {value!r}"
        raise ValueError(msg)
    return float(value)
