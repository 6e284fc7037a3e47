"""Parcel sorting on the conveyor cell: what arrives, what the instruction asks, what became of each parcel.

Parcels of two colours ride the belt (they move with the belt joint's travel, so a stopped belt stops
them); one bin on each side of the arm. The instruction names the rule, and its two variants swap it,
so the bins look alike and only the language says where a colour goes. The variants differ in a word,
not only in word order: "red ... left ..., blue ... right" and its mirror are the same bag of words,
and a policy trained from scratch on two such sentences was measured not to tell them apart. Grasping is kinematic: a
gripper that closes with its tip within `grasp_radius_m` of a parcel on the belt holds it; opening
it drops the parcel where the tip is. Each parcel ends `right` (in its bin), `wrong` (in the other
bin), `dropped` (released anywhere else) or `missed` (left the belt's end, or was still on the belt,
upstream or in the gripper when the time ran out). An episode ends when every parcel has an outcome
or at its time limit.

Timing, chosen so that a policy with about 1 s of inference latency can sort every parcel: the
nominal belt speed is 0.04 m/s (16 px/s), so a parcel stays in the 0.7 m pick zone for 17 s and
moves 4 cm (less than the 5.5 cm grasp radius) during one inference; parcels arrive 0.40-0.55 m
apart (10-14 s), twice the time the scripted expert needs per parcel.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from internvla_ros.runtime.params import flatten_parameters
from internvla_ros.sim.layout import BELT_CENTRE_Y, BELT_ENTRY_X, BELT_EXIT_X, BINS, PIXELS_PER_METRE, bin_at

COLOURS = ("red", "blue")
PARCEL_RGB = {"red": (205, 45, 45), "blue": (45, 85, 215)}
# Variant -> colour -> bin; the instruction says it in words.
RULES = ({"red": "left", "blue": "right"}, {"red": "right", "blue": "left"})
OUTCOMES = ("right", "wrong", "dropped", "missed")
AUTO_LIMIT_MARGIN_S = 10.0
SIM_NODE_BLOCKS = ("/**/sim_robot", "sim_robot")  # where a robot file keeps the sim's own parameters


def instruction(variant: int) -> str:
    """The rule in words: where red parcels go, and that blue ones go to the other bin."""
    return f"put the red parcels in the {RULES[variant]['red']} bin and the blue parcels in the other bin"


@dataclass(frozen=True)
class TaskConfig:
    """The task section of the sim's parameters (`task.*`); lengths in metres along the belt."""

    parcels: int = 3
    belt_speed_m_s: float = 0.04
    first_parcel_m: tuple[float, float] = (0.20, 0.35)  # where the first parcel is at the start
    gap_m: tuple[float, float] = (0.40, 0.55)  # between consecutive parcels
    lane_spread_m: float = 0.0375  # parcels lie up to this far off the belt's centre line
    grasp_radius_m: float = 0.055
    closed_below: float = 0.5  # gripper opening (0 closed .. 1 open) under which it holds a parcel
    time_limit_s: float = 0.0  # 0: when the last parcel leaves the belt at the nominal speed, + 10 s

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> TaskConfig:
        """From dotted names without the `task.` prefix; an unknown name or bad value is refused."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"task.{unknown[0]}: unknown task parameter (known: {', '.join(sorted(known))})")
        fields: dict[str, Any] = {}
        for name, value in values.items():
            fields[name] = tuple(float(v) for v in value) if isinstance(getattr(cls, name), tuple) else value
        config = cls(**fields)
        config.validate()
        return config

    def validate(self) -> None:
        checks = [
            ("parcels", 1 <= int(self.parcels) <= 1000, "an integer in 1..1000"),
            ("belt_speed_m_s", 0.0 < self.belt_speed_m_s <= 0.5, "in (0, 0.5] m/s (the belt's limit)"),
            ("first_parcel_m", 0.0 <= self.first_parcel_m[0] <= self.first_parcel_m[1], "[min, max], 0 <= min <= max"),
            ("gap_m", 0.1 <= self.gap_m[0] <= self.gap_m[1], "[min, max] with 0.1 <= min <= max (parcels apart)"),
            ("lane_spread_m", 0.0 <= self.lane_spread_m <= 0.05, "in [0, 0.05] m (inside the belt)"),
            ("grasp_radius_m", 0.0 < self.grasp_radius_m <= 0.2, "in (0, 0.2] m"),
            ("closed_below", 0.0 < self.closed_below < 1.0, "in (0, 1)"),
            ("time_limit_s", self.time_limit_s >= 0.0, ">= 0 (0: automatic)"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"task.{name}: {getattr(self, name)!r} is not allowed; use {allowed}")


def sim_section(path: str | Path, section: str) -> dict[str, Any] | None:
    """One section of the sim's block (`/**/sim_robot: ros__parameters: <section>:`) of a robot file,
    flattened to dotted names; None when the file has none."""
    document = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for name in SIM_NODE_BLOCKS:
        block = (document or {}).get(name)
        if isinstance(block, Mapping) and isinstance(block.get("ros__parameters", {}).get(section), Mapping):
            return flatten_parameters(block["ros__parameters"][section])
    return None


def task_config_from_yaml(path: str | Path) -> TaskConfig | None:
    """The `task:` section of the sim's block of a robot file; None when the file has none (a cell
    without the sorting task)."""
    parameters = sim_section(path, "task")
    return None if parameters is None else TaskConfig.from_parameters(parameters)


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: the seed places and colours the parcels; the variant picks the rule; `episode` is
    the caller's label, echoed on every message of the episode. `red_share` (None: each colour equally
    likely, the seed's own draw) recolours the same layout so that a parcel is red with that probability:
    a recording with more of one colour, for training (see `internvla_ros.learning.record`). `lanes_m`
    (None: the config's +-lane_spread_m, the seed's own draw) moves the same parcels across the belt to lie
    between [min, max] m from its centre line (+ toward the arm's base): more demonstrations where a policy
    fails."""

    seed: int
    variant: int
    parcels: int
    episode: int = 0
    red_share: float | None = None
    lanes_m: tuple[float, float] | None = None

    @classmethod
    def from_json(cls, text: str, defaults: TaskConfig) -> EpisodeSpec:
        """`{"seed": 7, "variant": 1, "parcels": 3}`; variant defaults to seed % 2, parcels to the config's;
        an optional `"red_share"` in [0, 1] and `"lanes_m": [min, max]` (see `lanes_problem`)."""
        try:
            data = json.loads(text)
            seed = int(data["seed"])
            share, lanes = data.get("red_share"), data.get("lanes_m")
            if lanes is not None:
                low, high = (float(value) for value in lanes)  # exactly two numbers, else ValueError
                lanes = (low, high)
            spec = cls(seed, int(data.get("variant", seed % len(RULES))), int(data.get("parcels", defaults.parcels)),
                       int(data.get("episode", 0)), None if share is None else float(share), lanes)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"task/start: {text!r} is not a JSON object like "
                             f'{{"seed": 7, "variant": 1, "parcels": 3}} ({err})') from err
        if (spec.variant not in range(len(RULES)) or spec.parcels < 1 or spec.seed < 0
                or not (spec.red_share is None or 0.0 <= spec.red_share <= 1.0)):
            raise ValueError(f"task/start: seed >= 0, variant in 0..{len(RULES) - 1}, parcels >= 1, red_share in "
                             f"[0, 1] or absent; got {text!r}")
        if spec.lanes_m is not None and (problem := lanes_problem(spec.lanes_m)):
            raise ValueError(f"task/start: lanes_m {problem}, or leave it out; got {text!r}")
        return spec


LANES_MAX_M = 0.05  # as far off the belt's centre line as lane_spread_m allows: the parcel stays on the belt


def lanes_problem(lanes_m: tuple[float, float]) -> str | None:
    """Why ``lanes_m`` cannot be used, or None."""
    low, high = lanes_m
    if not -LANES_MAX_M <= low <= high <= LANES_MAX_M:
        return f"[{low}, {high}] m: give min <= max within [{-LANES_MAX_M}, {LANES_MAX_M}] m of the belt's centre line"
    return None


@dataclass
class Parcel:
    id: int
    colour: str
    offset_px: float  # x on the belt when the belt has travelled 0 since the start
    y: float
    lane_y: float  # y where it lies on the belt (y follows the gripper while held)
    status: str = "upcoming"  # upcoming, belt, held, or one of OUTCOMES
    x: float = 0.0
    bin: str | None = None
    grasped_s: float | None = None  # when the gripper closed around it


@dataclass(frozen=True)
class ParcelOutcome:
    parcel: int
    colour: str
    outcome: str
    bin: str | None
    t_s: float
    lane_offset_m: float  # where it lay across the belt: from the centre line, + toward the arm's base
    released_at_px: tuple[float, float] | None = None  # the tip where the gripper let it go (None: never held)
    held_s: float | None = None  # from the grasp to the release


@dataclass(frozen=True)
class Close:
    """The empty gripper closing: whether it held the nearest parcel on the belt, that parcel (-1: none),
    the tip's offset from it (px; x along the belt's travel, so + is a close before the parcel reached the
    tip; y + toward the arm's base) and the lane the parcel lies in (m from the belt's centre line, + toward
    the arm's base)."""

    held: bool
    parcel: int
    offset_px: tuple[float, float] | None
    lane_offset_m: float | None

    @property
    def distance_px(self) -> float:
        """The tip's distance to that parcel (inf with none on the belt)."""
        return float(np.hypot(*self.offset_px)) if self.offset_px is not None else np.inf

    def as_dict(self) -> dict[str, Any]:
        return {"parcel": self.parcel, "held": self.held, "dx_px": round(self.offset_px[0], 1),
                "dy_px": round(self.offset_px[1], 1), "lane_offset_m": self.lane_offset_m}


@dataclass
class SortingTask:
    """One episode, advanced by `step` with the cell's measured state."""

    config: TaskConfig
    spec: EpisodeSpec
    start_s: float
    start_travel_m: float
    parcels: list[Parcel] = field(init=False)
    outcomes: list[ParcelOutcome] = field(default_factory=list)
    holding: int | None = None
    end_s: float | None = None
    # Every closing of the empty gripper (see `Close`). A policy that never closes and one that closes beside
    # the parcels both only miss; these tell them apart.
    closes: list[Close] = field(default_factory=list)
    _closed: bool = False
    _now_s: float = 0.0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.spec.seed)
        recolour = None if self.spec.red_share is None else np.random.default_rng([self.spec.seed, 1])
        relane = None if self.spec.lanes_m is None else np.random.default_rng([self.spec.seed, 2])
        x = rng.uniform(*self.config.first_parcel_m) * PIXELS_PER_METRE
        spread = self.config.lane_spread_m * PIXELS_PER_METRE
        self.parcels = []
        for k in range(self.spec.parcels):
            if k:
                x -= rng.uniform(*self.config.gap_m) * PIXELS_PER_METRE
            colour = COLOURS[int(rng.integers(len(COLOURS)))]  # drawn in every case: the layout stays the seed's
            if recolour is not None:
                colour = "red" if recolour.random() < self.spec.red_share else "blue"
            y = BELT_CENTRE_Y + rng.uniform(-spread, spread)  # drawn in every case, as the colour
            if relane is not None:
                y = BELT_CENTRE_Y + relane.uniform(*self.spec.lanes_m) * PIXELS_PER_METRE
            self.parcels.append(Parcel(k, colour, x, y, y))
        self._now_s = self.start_s
        self._update_belt(self.start_travel_m)

    @property
    def rule(self) -> dict[str, str]:
        return RULES[self.spec.variant]

    @property
    def instruction(self) -> str:
        return instruction(self.spec.variant)

    @property
    def time_limit_s(self) -> float:
        if self.config.time_limit_s > 0:
            return self.config.time_limit_s
        last = min(p.offset_px for p in self.parcels)
        return (BELT_EXIT_X - last) / (self.config.belt_speed_m_s * PIXELS_PER_METRE) + AUTO_LIMIT_MARGIN_S

    @property
    def done(self) -> bool:
        return self.end_s is not None

    def _update_belt(self, travel_m: float) -> None:
        shift = (travel_m - self.start_travel_m) * PIXELS_PER_METRE
        for parcel in self.parcels:
            if parcel.status in ("upcoming", "belt"):
                parcel.x = parcel.offset_px + shift
                if parcel.status == "upcoming" and parcel.x >= BELT_ENTRY_X:
                    parcel.status = "belt"

    def _finish(self, parcel: Parcel, outcome: str, bin_name: str | None = None,
                released_at: tuple[float, float] | None = None) -> ParcelOutcome:
        parcel.status, parcel.bin = outcome, bin_name
        held_s = None if released_at is None or parcel.grasped_s is None else round(self._now_s - parcel.grasped_s, 3)
        result = ParcelOutcome(parcel.id, parcel.colour, outcome, bin_name, round(self._now_s - self.start_s, 3),
                               self._lane_offset_m(parcel),
                               None if released_at is None else (round(released_at[0], 1), round(released_at[1], 1)),
                               held_s)
        self.outcomes.append(result)
        return result

    @staticmethod
    def _lane_offset_m(parcel: Parcel) -> float:
        return round((parcel.lane_y - BELT_CENTRE_Y) / PIXELS_PER_METRE, 4)

    def step(self, now_s: float, travel_m: float, tip: tuple[float, float], opening: float) -> list[ParcelOutcome]:
        """Moves the parcels with the belt and the gripper; returns the outcomes decided in this step."""
        if self.done:
            return []
        self._now_s = now_s
        self._update_belt(travel_m)
        decided = [self._finish(p, "missed") for p in self.parcels if p.status == "belt" and p.x > BELT_EXIT_X]
        closed = opening < self.config.closed_below
        if self.holding is not None:
            held = self.parcels[self.holding]
            held.x, held.y = tip
            if not closed:
                self.holding = None
                where = bin_at(*tip)
                outcome = "dropped" if where is None else ("right" if self.rule[held.colour] == where else "wrong")
                decided.append(self._finish(held, outcome, where, tip))
        elif closed and not self._closed:  # the gripper has just closed: around a parcel?
            reach = self.config.grasp_radius_m * PIXELS_PER_METRE
            near = [(float(np.hypot(p.x - tip[0], p.y - tip[1])), p.id) for p in self.parcels if p.status == "belt"]
            distance, nearest = min(near, default=(np.inf, -1))
            grasped = distance <= reach
            if grasped:
                self.holding = nearest
                self.parcels[nearest].status = "held"
                self.parcels[nearest].grasped_s = now_s
            parcel = self.parcels[nearest] if nearest >= 0 else None
            self.closes.append(Close(grasped, nearest,
                                     (tip[0] - parcel.x, tip[1] - parcel.lane_y) if parcel else None,
                                     self._lane_offset_m(parcel) if parcel else None))
        self._closed = closed
        if now_s - self.start_s >= self.time_limit_s:
            decided += [self._finish(p, "missed") for p in self.parcels if p.status in ("upcoming", "belt", "held")]
            self.holding = None
        if all(p.status in OUTCOMES for p in self.parcels):
            self.end_s = now_s
        return decided

    def summary(self) -> dict[str, Any]:
        counts = {name: sum(o.outcome == name for o in self.outcomes) for name in OUTCOMES}
        end = self.end_s if self.end_s is not None else self._now_s
        return {"episode": self.spec.episode, "seed": self.spec.seed, "variant": self.spec.variant,
                "instruction": self.instruction,
                "parcels": len(self.parcels), **counts, "success_rate": counts["right"] / len(self.parcels),
                "duration_s": round(end - self.start_s, 3), "done": self.done,
                "outcomes": [o.__dict__ for o in self.outcomes], **self.grasp_summary()}

    def grasp_summary(self) -> dict[str, Any]:
        """``closes`` (the empty gripper closed), ``grasps`` (it closed around a parcel) and the median tip
        distance to the nearest parcel on the belt at a close (px; None without a close near any)."""
        distances = [c.distance_px for c in self.closes if c.offset_px is not None]
        return {"closes": len(self.closes), "grasps": sum(c.held for c in self.closes),
                "close_distance_px_median": round(float(np.median(distances)), 1) if distances else None,
                "close_offsets": [c.as_dict() for c in self.closes if c.offset_px is not None]}

    def snapshot(self) -> dict[str, Any]:
        """The ground truth a scripted expert plans from (pixels of the head camera)."""
        return {"t_s": round(self._now_s - self.start_s, 4), "episode": self.spec.episode, "seed": self.spec.seed,
                "done": self.done,
                "rule": self.rule, "bins": BINS, "holding": self.holding,
                "parcels": [{"id": p.id, "colour": p.colour, "status": p.status, "x": round(p.x, 2),
                             "y": round(p.y, 2)} for p in self.parcels]}

    def drawables(self) -> list[tuple[float, float, tuple[int, int, int], bool]]:
        """(x, y, rgb, held) of every parcel a camera can see."""
        return [(p.x, p.y, PARCEL_RGB[p.colour], p.status == "held") for p in self.parcels
                if p.status in ("belt", "held", "right", "wrong")]
