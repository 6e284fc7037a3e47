"""The sorting task without ROS: each outcome on a scripted situation, the rule variants, the config, the
cameras, and the scripted expert closing the loop on the simulated cell in simulated time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from internvla_ros.learning.expert_loop import run_offline
from internvla_ros.runtime.config import RuntimeConfig
from internvla_ros.sim.cell import SimulatedCell
from internvla_ros.sim.expert import AIMS, ExpertCommand, SortingExpert
from internvla_ros.sim.layout import BELT_CENTRE_Y, BELT_EXIT_X, PIXELS_PER_METRE, arm_layouts, bin_centre, solve_chain
from internvla_ros.sim.render import CellRenderer
from internvla_ros.sim.task import (
    PARCEL_RGB,
    EpisodeSpec,
    Parcel,
    SortingTask,
    TaskConfig,
    instruction,
    task_config_from_yaml,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
CONVEYOR = CONFIG_DIR / "conveyor_sorting.yaml"
OPEN, CLOSED = 1.0, 0.0


def one_parcel_task(variant: int = 0, **config: float) -> SortingTask:
    return SortingTask(TaskConfig(parcels=1, **config), EpisodeSpec(seed=3, variant=variant, parcels=1), 0.0, 0.0)


def pick(task: SortingTask, t: float = 0.1) -> tuple[float, float]:
    """Closes the gripper on the parcel where it lies; returns its position."""
    parcel = task.parcels[0]
    tip = (parcel.x + 5.0, parcel.y - 5.0)
    assert task.step(t, 0.0, tip, OPEN) == []
    assert task.step(t + 0.01, 0.0, tip, CLOSED) == []
    assert task.holding == 0 and parcel.status == "held"
    return tip


@pytest.mark.parametrize(("variant", "bin_name"), [(0, "left"), (0, "right"), (1, "left"), (1, "right")])
def test_a_parcel_released_over_a_bin_is_right_or_wrong_by_the_instructions_rule(variant: int, bin_name: str) -> None:
    task = one_parcel_task(variant)
    colour = task.parcels[0].colour
    pick(task)
    over = bin_centre(bin_name)
    assert task.step(0.5, 0.0, over, CLOSED) == []  # carried: follows the tip
    assert (task.parcels[0].x, task.parcels[0].y) == over
    decided = task.step(0.6, 0.0, over, OPEN)
    expected = "right" if task.rule[colour] == bin_name else "wrong"
    assert [(d.outcome, d.bin) for d in decided] == [(expected, bin_name)]
    assert task.done and task.summary()[expected] == 1 and task.summary()["success_rate"] == (expected == "right")
    said = "red parcels in the left bin" in task.instruction  # else red goes right
    assert ((colour == "red") == (bin_name == ("left" if said else "right"))) == (expected == "right")


def test_an_outcome_says_where_its_parcel_lay_across_the_belt_not_where_the_gripper_took_it() -> None:
    layouts = {seed: SortingTask(TaskConfig(), EpisodeSpec(seed, 0, 3), 0.0, 0.0) for seed in range(40)}
    lanes = [p.y for task in layouts.values() for p in task.parcels]
    toward_arm = next(s for s, task in layouts.items() if task.parcels[0].y > BELT_CENTRE_Y + 5)
    task = layouts[toward_arm]
    lay = task.parcels[0].y
    pick(task)
    task.step(0.5, 0.0, bin_centre("left"), CLOSED)
    (outcome,) = task.step(0.6, 0.0, bin_centre("left"), OPEN)
    assert outcome.lane_offset_m == pytest.approx((lay - BELT_CENTRE_Y) / PIXELS_PER_METRE, abs=1e-4)
    assert outcome.lane_offset_m > 0  # larger image y is nearer the arm's base, at the image's bottom
    assert task.summary()["outcomes"][0]["lane_offset_m"] == outcome.lane_offset_m
    spread = TaskConfig().lane_spread_m * PIXELS_PER_METRE
    assert min(lanes) < BELT_CENTRE_Y - spread / 2 and max(lanes) > BELT_CENTRE_Y + spread / 2


def test_the_two_instruction_variants_swap_the_rule_and_differ_in_a_word() -> None:
    assert instruction(0) == "put the red parcels in the left bin and the blue parcels in the other bin"
    assert instruction(1) == "put the red parcels in the right bin and the blue parcels in the other bin"
    assert sorted(instruction(0).split()) != sorted(instruction(1).split())  # not only the order


def test_released_outside_the_bins_is_dropped() -> None:
    task = one_parcel_task()
    pick(task)
    decided = task.step(0.5, 0.0, (320.0, 300.0), OPEN)
    assert [(d.outcome, d.bin) for d in decided] == [("dropped", None)] and task.done
    # where and after how long it was let go: what tells a policy's drop from a release short of a bin
    assert (decided[0].released_at_px, decided[0].held_s) == ((320.0, 300.0), 0.39)


def test_a_parcel_never_held_has_no_release_point() -> None:
    task = one_parcel_task()
    decided = task.step(task.time_limit_s + 1.0, 0.0, (0.0, 0.0), OPEN)
    assert [(d.outcome, d.released_at_px, d.held_s) for d in decided] == [("missed", None, None)]


def test_a_gripper_closing_away_from_the_parcel_or_already_closed_holds_nothing() -> None:
    task = one_parcel_task()
    parcel = task.parcels[0]
    far = (parcel.x + 0.06 * PIXELS_PER_METRE, parcel.y)  # beyond the 5.5 cm grasp radius
    task.step(0.1, 0.0, far, OPEN)
    task.step(0.2, 0.0, far, CLOSED)
    assert task.holding is None
    task.step(0.3, 0.0, (parcel.x, parcel.y), CLOSED)  # slid onto it while closed: no grasp
    assert task.holding is None and parcel.status == "belt"
    # the summary counts that close, its distance, and that it held nothing
    summary = task.summary()
    assert (summary["closes"], summary["grasps"], summary["close_distance_px_median"]) == (1, 0, 24.0)


def test_the_summary_counts_each_close_of_the_empty_gripper_and_each_grasp() -> None:
    task = one_parcel_task()
    parcel = task.parcels[0]
    assert task.summary()["closes"] == 0 and task.summary()["close_distance_px_median"] is None
    beside = (parcel.x, parcel.y + 40.0)
    for t in (0.1, 0.3):  # closes twice 40 px beside it, then on it
        task.step(t, 0.0, beside, OPEN)
        task.step(t + 0.1, 0.0, beside, CLOSED)
    pick(task, 0.5)
    task.step(0.7, 0.0, (0.0, 0.0), CLOSED)  # carried: closed all along, not a new close
    summary = task.summary()
    assert (summary["closes"], summary["grasps"]) == (3, 1)
    assert summary["close_distance_px_median"] == 40.0  # 40, 40 and 7.1 (the pick is 5 px off in x and y)
    # each close near a parcel: which, whether held, the tip's offset from it and the parcel's lane
    lane = round((parcel.lane_y - BELT_CENTRE_Y) / PIXELS_PER_METRE, 4)
    assert summary["close_offsets"] == [
        {"parcel": 0, "held": False, "dx_px": 0.0, "dy_px": 40.0, "lane_offset_m": lane},
        {"parcel": 0, "held": False, "dx_px": 0.0, "dy_px": 40.0, "lane_offset_m": lane},
        {"parcel": 0, "held": True, "dx_px": 5.0, "dy_px": -5.0, "lane_offset_m": lane}]


def test_a_close_with_no_parcel_on_the_belt_is_counted_without_an_offset() -> None:
    task = one_parcel_task()
    parcel = task.parcels[0]
    parcel.status, parcel.offset_px = "upcoming", -1000.0  # far upstream: not on the belt yet
    task.step(0.1, 0.0, (100.0, 100.0), OPEN)
    task.step(0.2, 0.0, (100.0, 100.0), CLOSED)
    summary = task.summary()
    assert (summary["closes"], summary["grasps"], summary["close_offsets"]) == (1, 0, [])


def test_a_parcel_that_rides_off_the_belt_is_missed_and_the_belt_moves_the_parcels() -> None:
    task = one_parcel_task()
    parcel = task.parcels[0]
    x0 = parcel.x
    task.step(1.0, 0.1, (0.0, 0.0), OPEN)
    assert parcel.x == pytest.approx(x0 + 0.1 * PIXELS_PER_METRE)
    travel = (BELT_EXIT_X + 1 - x0) / PIXELS_PER_METRE
    decided = task.step(2.0, travel, (0.0, 0.0), OPEN)
    assert [d.outcome for d in decided] == ["missed"] and task.done


def test_at_the_time_limit_parcels_on_the_belt_upstream_or_held_are_missed() -> None:
    task = SortingTask(TaskConfig(time_limit_s=5.0), EpisodeSpec(seed=1, variant=0, parcels=3), 0.0, 0.0)
    assert [p.status for p in task.parcels] == ["belt", "upcoming", "upcoming"]
    pick(task)
    assert task.step(4.9, 0.0, (0.0, 0.0), CLOSED) == []
    decided = task.step(5.0, 0.0, (0.0, 0.0), CLOSED)
    assert sorted(d.outcome for d in decided) == ["missed"] * 3 and task.done
    assert task.summary()["duration_s"] == 5.0


def test_the_seed_decides_colours_and_places_and_parcels_arrive_well_apart() -> None:
    config = TaskConfig()
    layouts = [[(p.colour, p.offset_px, p.y) for p in SortingTask(config, EpisodeSpec(s, 0, 5), 0.0, 0.0).parcels]
               for s in (7, 7, 8)]
    assert layouts[0] == layouts[1] and layouts[0] != layouts[2]
    gaps = -np.diff([x for _, x, _ in layouts[0]]) / PIXELS_PER_METRE
    assert np.all((gaps >= config.gap_m[0]) & (gaps <= config.gap_m[1]))


def test_red_share_recolours_the_seeds_layout_and_travels_in_the_start_message() -> None:
    def parcels(spec: EpisodeSpec) -> list[Parcel]:
        return SortingTask(TaskConfig(), spec, 0.0, 0.0).parcels

    for seed in (3, 4):
        plain = parcels(EpisodeSpec(seed, 0, 5))
        assert [p.colour for p in parcels(EpisodeSpec(seed, 0, 5, red_share=1.0))] == ["red"] * 5
        all_blue = parcels(EpisodeSpec(seed, 0, 5, red_share=0.0))
        assert [p.colour for p in all_blue] == ["blue"] * 5
        assert [(p.offset_px, p.y) for p in all_blue] == [(p.offset_px, p.y) for p in plain]
    colours = [p.colour for seed in range(200) for p in parcels(EpisodeSpec(seed, 0, 5, red_share=0.75))]
    assert 0.70 < colours.count("red") / len(colours) < 0.80
    spec = EpisodeSpec(9, 1, 3, 4, red_share=0.75)
    assert EpisodeSpec.from_json(json.dumps(spec.__dict__), TaskConfig()) == spec  # as the episode runner sends it
    plain_spec = EpisodeSpec(9, 1, 3, 4)
    assert EpisodeSpec.from_json(json.dumps(plain_spec.__dict__), TaskConfig()) == plain_spec
    with pytest.raises(ValueError, match=r"red_share in \[0, 1\] or absent"):
        EpisodeSpec.from_json('{"seed": 5, "red_share": 1.5}', TaskConfig())


def test_lanes_move_the_seeds_parcels_across_the_belt_and_travel_in_the_start_message() -> None:
    def parcels(spec: EpisodeSpec) -> list[Parcel]:
        return SortingTask(TaskConfig(), spec, 0.0, 0.0).parcels

    near = [p for seed in range(100) for p in parcels(EpisodeSpec(seed, 0, 3, lanes_m=(0.0125, 0.0375)))]
    offsets = np.array([(p.y - BELT_CENTRE_Y) / PIXELS_PER_METRE for p in near])
    assert offsets.min() >= 0.0125 and offsets.max() <= 0.0375 and offsets.max() - offsets.min() > 0.02
    for seed in (3, 4):
        plain, moved = parcels(EpisodeSpec(seed, 0, 5)), parcels(EpisodeSpec(seed, 0, 5, lanes_m=(-0.01, -0.01)))
        assert [(p.offset_px, p.colour) for p in moved] == [(p.offset_px, p.colour) for p in plain]
        assert [p.y for p in moved] == [BELT_CENTRE_Y - 4.0] * 5 and [p.y for p in plain] != [p.y for p in moved]
    spec = EpisodeSpec(9, 1, 3, 4, red_share=0.75, lanes_m=(0.01, 0.03))
    assert EpisodeSpec.from_json(json.dumps(spec.__dict__), TaskConfig()) == spec  # as the episode runner sends it
    for bad in ('[0.03, 0.01]', '[-0.06, 0.0]', '[0.01]'):
        with pytest.raises(ValueError, match=r"task/start: .*lanes_m"):
            EpisodeSpec.from_json(f'{{"seed": 5, "lanes_m": {bad}}}', TaskConfig())


def test_task_config_comes_from_the_sims_block_and_bad_values_are_refused() -> None:
    assert task_config_from_yaml(CONVEYOR) == TaskConfig()  # the shipped file states the defaults
    assert task_config_from_yaml(CONFIG_DIR / "dual_arm.yaml") is None
    with pytest.raises(ValueError, match=r"task.belt_speed_m_s: 0.9 is not allowed; use in \(0, 0.5\]"):
        TaskConfig.from_parameters({"belt_speed_m_s": 0.9})
    with pytest.raises(ValueError, match=r"task\.speed: unknown task parameter"):
        TaskConfig.from_parameters({"speed": 0.1})
    spec = EpisodeSpec.from_json('{"seed": 5, "episode": 2}', TaskConfig())
    assert spec == EpisodeSpec(5, 1, 3, 2)
    with pytest.raises(ValueError, match=r"task/start: .* is not a JSON object like"):
        EpisodeSpec.from_json("seed 5", TaskConfig())


def test_the_cameras_show_the_parcels_in_their_colours_and_the_held_one_moves_with_the_gripper() -> None:
    config = RuntimeConfig.from_yaml(CONVEYOR)
    cell = SimulatedCell(config)
    task = one_parcel_task()
    parcel = task.parcels[0]
    scene = CellRenderer(config).scene(cell.joint_state(), task.drawables())
    assert tuple(scene[round(parcel.y) + 8, round(parcel.x) - 8]) == PARCEL_RGB[parcel.colour]
    arm = arm_layouts(config)[0]
    tip = arm.tip(cell.joint_state().positions)
    parcel.status, parcel.x, parcel.y = "held", *tip
    scene = CellRenderer(config).scene(cell.joint_state(), task.drawables())
    assert tuple(scene[round(tip[1]) + 12, round(tip[0]) + 12]) == PARCEL_RGB[parcel.colour]


def test_the_chain_solver_reaches_the_pick_zone_and_both_bins() -> None:
    config = RuntimeConfig.from_yaml(CONVEYOR)
    arm = arm_layouts(config)[0]
    low = np.array([j.limits.min_position for j in config.joints])
    high = np.array([j.limits.max_position for j in config.joints])
    start = SimulatedCell(config).joint_state().positions
    for target in [(180.0, 220.0), (460.0, 250.0), bin_centre("left"), bin_centre("right")]:
        solution = solve_chain(arm, target, start, low, high)
        assert solution is not None and np.allclose(arm.tip(solution), target, atol=1e-6)
        assert np.all(solution >= low) and np.all(solution <= high)
    assert solve_chain(arm, (320.0, 40.0), start, low, high) is None  # beyond its reach


def test_the_expert_sorts_every_parcel_within_the_limits_in_simulated_time() -> None:
    config = RuntimeConfig.from_yaml(CONVEYOR)
    task = TaskConfig()
    summary, cell = run_offline(config, task, EpisodeSpec(seed=11, variant=1, parcels=2),
                                lambda: SortingExpert(config, task))
    assert (summary["right"], summary["parcels"]) == (2, 2), summary
    assert cell.limit_violations == 0 and cell.acceleration_violations == 0, cell.drain_violations()
    assert sum(cell.rejected.values()) == 0


class MoveEnds:
    """Wraps an agent and keeps where each arm move it sends puts the gripper tip (head-camera pixels)."""

    def __init__(self, agent: SortingExpert, config: RuntimeConfig) -> None:
        self.agent, self.arm, self.size = agent, arm_layouts(config)[0], len(config.joints)
        self.tips: list[tuple[float, float]] = []

    def act(self, now_s: float, snapshot: dict | None, positions: np.ndarray) -> ExpertCommand:
        command = self.agent.act(now_s, snapshot, positions)
        if command.move is not None:
            full = np.asarray(positions, dtype=float).copy()
            full[list(self.arm.joints)] = command.move.positions[-1]
            self.tips.append(self.arm.tip(full))
        return command


def test_the_perturbed_expert_goes_off_the_intercept_corrects_and_still_sorts_every_parcel() -> None:
    """Recovery demonstrations: approaches end beside the parcel's path, a short move corrects onto it,
    and the episode is still sorted right within every limit."""
    config = RuntimeConfig.from_yaml(CONVEYOR)
    task = TaskConfig()
    runs = {}
    for perturb in (0.0, 30.0):
        moves = MoveEnds(SortingExpert(config, task, perturb_px=perturb, seed=0), config)
        summary, cell = run_offline(config, task, EpisodeSpec(seed=11, variant=1, parcels=2), lambda m=moves: m)
        assert (summary["right"], summary["parcels"]) == (2, 2), (perturb, summary)
        assert cell.limit_violations == 0 and cell.acceleration_violations == 0, cell.drain_violations()
        runs[perturb] = np.asarray(moves.tips)
    # each extra move is a correction of 15-30 px (the outer 3/4 of the disc) onto the unperturbed intercept
    corrections = len(runs[30.0]) - len(runs[0.0])
    assert corrections >= 1, (runs[0.0], runs[30.0])
    steps = np.hypot(*np.diff(runs[30.0], axis=0).T)
    assert ((steps >= 15.0 - 1e-6) & (steps <= 30.0 + 1e-6)).sum() == corrections, steps


@pytest.mark.parametrize("lanes_m", [(0.03, 0.0375), (-0.0375, -0.03)])
def test_the_experts_aim_puts_its_waiting_tip_on_the_lane_or_the_centre_line_and_sorts_every_parcel(lanes_m) -> None:
    """aim: "lane" ends every move onto the belt on the parcel's lane, "centre-line" on the centre line whatever
    the lane, "near-half" on the centre line for lanes nearer the arm (+) and on the lane for the far ones,
    "near-midway" halfway between the two for the near lanes; the grasp radius still catches every parcel."""
    config = RuntimeConfig.from_yaml(CONVEYOR)
    task = TaskConfig()
    on_belt_y = {}
    for aim in AIMS:
        moves = MoveEnds(SortingExpert(config, task, seed=0, aim=aim), config)
        spec = EpisodeSpec(seed=11, variant=1, parcels=2, lanes_m=lanes_m)
        summary, cell = run_offline(config, task, spec, lambda m=moves: m)
        assert (summary["right"], summary["parcels"]) == (2, 2), (aim, summary)
        assert cell.limit_violations == 0 and cell.acceleration_violations == 0, cell.drain_violations()
        on_belt_y[aim] = np.subtract([y for x, y in moves.tips if abs(y - BELT_CENTRE_Y) < 20 and x > 150],
                                     BELT_CENTRE_Y)
    lane_px = [m * PIXELS_PER_METRE for m in lanes_m]
    near = lanes_m[0] > 0
    on_centre_line = ["centre-line", "near-half"] if near else ["centre-line"]
    for aim in AIMS:
        assert len(on_belt_y[aim]), (aim, on_belt_y)
        if aim in on_centre_line:
            assert np.allclose(on_belt_y[aim], 0.0, atol=1e-6), (aim, on_belt_y)
        elif aim == "near-midway" and near:
            within = (on_belt_y[aim] >= lane_px[0] / 2 - 1e-6) & (on_belt_y[aim] <= lane_px[1] / 2 + 1e-6)
            assert np.all(within), (aim, on_belt_y)
        else:
            within = (on_belt_y[aim] >= lane_px[0] - 1e-6) & (on_belt_y[aim] <= lane_px[1] + 1e-6)
            assert np.all(within), (aim, on_belt_y)


def test_an_unknown_aim_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="aim 'middle': use one of lane, centre-line, near-half, near-midway"):
        SortingExpert(RuntimeConfig.from_yaml(CONVEYOR), TaskConfig(), aim="middle")


class GraspBelt:
    """Wraps an agent and keeps the measured belt speed whenever the ground truth first shows a parcel held."""

    def __init__(self, agent: SortingExpert) -> None:
        self.agent, self.holding, self.at_grasp, self.belt = agent, None, [], []

    def act(self, now_s: float, snapshot: dict | None, positions: np.ndarray) -> ExpertCommand:
        if snapshot is not None:
            if snapshot["holding"] is not None and self.holding is None:
                self.at_grasp.append(float(snapshot["belt_speed_m_s"]))
            self.holding = snapshot["holding"]
        command = self.agent.act(now_s, snapshot, positions)
        self.belt.append(command.belt)
        return command


@pytest.mark.parametrize("perturb", [0.0, 30.0])
def test_the_belt_stopping_expert_grasps_each_parcel_at_rest_and_sorts_every_one(perturb: float) -> None:
    """stop_belt: the belt is stopped at every grasp and runs at its nominal speed in between."""
    config = RuntimeConfig.from_yaml(CONVEYOR)
    task = TaskConfig()
    right = 0
    for seed in (11, 12):
        agent = GraspBelt(SortingExpert(config, task, perturb_px=perturb, seed=seed, stop_belt=True))
        summary, cell = run_offline(config, task, EpisodeSpec(seed=seed, variant=seed % 2, parcels=3),
                                    lambda a=agent: a)
        assert cell.limit_violations == 0 and cell.acceleration_violations == 0, cell.drain_violations()
        assert len(agent.at_grasp) == summary["grasps"] >= 3 and max(map(abs, agent.at_grasp)) < 1e-3, agent.at_grasp
        assert max(agent.belt) == task.belt_speed_m_s and min(agent.belt) == 0.0
        right += summary["right"]
    assert right == 6


@pytest.mark.parametrize("perturb", [-1.0, 101.0, float("nan")])
def test_the_expert_refuses_a_perturbation_out_of_range(perturb: float) -> None:
    config = RuntimeConfig.from_yaml(CONVEYOR)
    with pytest.raises(ValueError, match="perturb_px"):
        SortingExpert(config, TaskConfig(), perturb_px=perturb)
