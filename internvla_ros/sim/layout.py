"""Where things are in the simulated cells, in head-camera pixels: the arms' planar chains, the belt, the bins.

The head camera looks straight down, so its pixels are the plane the cell works in (PIXELS_PER_METRE
converts belt travel). An arm is drawn, judged for grasps and solved for by the scripted expert with
the same chain: joints 1, 2 and 4 of a 7-DoF arm bend it (each by 0.8 of its angle), so what a camera
shows and what the task counts cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from internvla_ros.runtime.config import RuntimeConfig

HEAD_SIZE = (480, 640)  # height, width
PIXELS_PER_METRE = 400.0
LINK_LENGTHS_PX = (120.0, 100.0, 60.0)
CHAIN_JOINTS = (0, 1, 3)  # which arm joints bend the drawn chain
CHAIN_GAIN = 0.8  # drawn bend per joint radian
BASE_Y = HEAD_SIZE[0] - 30.0

# The conveyor cell: a belt across the image, one bin on each side of the arm's base below it.
BELT_TOP, BELT_BOTTOM = 195, 275
BELT_CENTRE_Y = (BELT_TOP + BELT_BOTTOM) / 2
PARCEL_SIZE_PX = 36
BELT_ENTRY_X = -PARCEL_SIZE_PX / 2  # a parcel has arrived once it starts to show at the left edge
BELT_EXIT_X = HEAD_SIZE[1] + PARCEL_SIZE_PX / 2  # ... and is missed once it has left at the right edge
PICK_ZONE_X = (180.0, 460.0)  # where the arm reaches every lane of the belt with margin
BINS = {"left": (50, 335, 170, 425), "right": (470, 335, 590, 425)}  # x0, y0, x1, y1


def bin_at(x: float, y: float) -> str | None:
    """The bin whose opening contains the point, if any."""
    for name, (x0, y0, x1, y1) in BINS.items():
        if x0 <= x <= x1 and y0 <= y <= y1:
            return name
    return None


def bin_centre(name: str) -> tuple[float, float]:
    x0, y0, x1, y1 = BINS[name]
    return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class ArmLayout:
    joints: tuple[int, ...]  # indices into the joint state
    gripper: int | None
    base: tuple[float, float]  # pixels (x, y) in the head image
    heading: float  # radians, direction of the chain at zero joint angles

    def chain(self, positions: np.ndarray) -> list[tuple[float, float]]:
        """Base, the two bends and the gripper tip, in pixels."""
        points = [self.base]
        angle = self.heading
        x, y = self.base
        for length, joint in zip(LINK_LENGTHS_PX, CHAIN_JOINTS, strict=True):
            angle += CHAIN_GAIN * float(positions[self.joints[joint]])
            x, y = x + length * np.cos(angle), y + length * np.sin(angle)
            points.append((x, y))
        return points

    def tip(self, positions: np.ndarray) -> tuple[float, float]:
        return self.chain(positions)[-1]


def arm_layouts(config: RuntimeConfig) -> tuple[ArmLayout, ...]:
    """One planar chain per joint_trajectory controller with enough joints, spread along the bottom."""
    arms = [c for c in config.controllers if c.type == "joint_trajectory" and len(c.joints) >= max(CHAIN_JOINTS) + 1]
    grippers = [config.joint_index[g.joint] for g in config.grippers]
    width = HEAD_SIZE[1]
    return tuple(ArmLayout(joints=tuple(config.joint_index[name] for name in arm.joints),
                           gripper=grippers[i] if i < len(grippers) else None,
                           base=(width * (i + 1) / (len(arms) + 1), BASE_Y), heading=-np.pi / 2)
                 for i, arm in enumerate(arms))


def solve_chain(arm: ArmLayout, target: tuple[float, float], current: np.ndarray, low: np.ndarray,
                high: np.ndarray, margin: float = 0.05, samples: int = 720) -> np.ndarray | None:
    """Joint positions (config order) that put the tip on ``target``, closest to ``current`` among the
    solutions inside [low + margin, high - margin]; the joints outside the chain keep their values.
    None when the target is out of reach. Every direction of the last link is tried, both elbows."""
    j1, j2, j4 = (arm.joints[k] for k in CHAIN_JOINTS)
    l1, l2, l3 = LINK_LENGTHS_PX
    psi = np.linspace(-np.pi, np.pi, samples, endpoint=False)  # absolute angle of the last link
    wx = target[0] - l3 * np.cos(psi) - arm.base[0]
    wy = target[1] - l3 * np.sin(psi) - arm.base[1]
    cos_beta = (wx**2 + wy**2 - l1**2 - l2**2) / (2 * l1 * l2)
    ok = np.abs(cos_beta) <= 1.0
    psi, wx, wy, cos_beta = psi[ok], wx[ok], wy[ok], cos_beta[ok]
    beta = np.concatenate([np.arccos(cos_beta), -np.arccos(cos_beta)])  # both elbows
    psi, wx, wy = np.tile(psi, 2), np.tile(wx, 2), np.tile(wy, 2)
    a1 = np.arctan2(wy, wx) - np.arctan2(l2 * np.sin(beta), l1 + l2 * np.cos(beta))
    bend1 = np.angle(np.exp(1j * (a1 - arm.heading)))  # wrapped into (-pi, pi]
    bend3 = np.angle(np.exp(1j * (psi - a1 - beta)))
    candidates = np.stack([bend1, beta, bend3], axis=1) / CHAIN_GAIN
    index = np.array([j1, j2, j4])
    inside = np.all((candidates >= low[index] + margin) & (candidates <= high[index] - margin), axis=1)
    if not inside.any():
        return None
    valid = candidates[inside]
    best = valid[np.argmin(np.abs(valid - current[index]).max(axis=1))]
    solution = np.asarray(current, dtype=np.float64).copy()
    solution[index] = best
    return solution
