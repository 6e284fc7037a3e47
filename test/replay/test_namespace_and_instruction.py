"""``internvla replay BAG --config C --model M`` with no other flag: the namespace and the instruction come
from the bag (as the demo records it: inputs and instruction under one namespace)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rosbags.highlevel import AnyReader

from test.replay.bagfactory import EPOCH_NS, BagSpec, write_sim_bag
from test.replay.conftest import Replay

EXIT_OK, EXIT_UNUSABLE = 0, 2
NS_PER_S = 1_000_000_000
RED, BLUE = "pick the red parcel", "pick the blue parcel"
CHANGE_S = 1.505  # between two joint_states (10 ms apart), so the observations are the same in both replays


def _messages(bag: Path, topic: str) -> list[tuple[int, object]]:
    with AnyReader([bag]) as reader:
        return [(stamp, reader.deserialize(raw, c.msgtype)) for c, stamp, raw in reader.messages()
                if c.topic == topic]


def test_a_namespaced_bag_replays_without_flags(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "demo", spec=BagSpec(duration_s=2.0, namespace="/demo",
                                                        instructions=((0.0, RED),)))
    out = tmp_path / "out"
    assert replay(bag, "--out", str(out), instruction=None) == EXIT_OK
    captured = capsys.readouterr()
    assert "replay: namespace /demo: the only one holding /demo/joint_states, /demo/cameras/head/image_raw" \
        in captured.err
    assert f"instruction from /demo/instruction: '{RED}' at 0.000 s" in captured.out
    with AnyReader([out]) as reader:
        assert sorted(reader.topics) == ["/demo/arm_controller/joint_trajectory", "/demo/conveyor_controller/commands",
                                         "/demo/gripper_controller/commands", "/demo/policy_node/action_chunk",
                                         "/demo/policy_node/status"]
    statuses = [status for _, status in _messages(out, "/demo/policy_node/status")]
    assert statuses and {s.instruction for s in statuses} == {RED}


def test_several_namespaces_are_refused_with_the_list(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "two_cells", spec=BagSpec(duration_s=2.0, namespace="/cell_1",
                                                             mirror_namespaces=("/cell_2",), commands=False))
    assert replay(bag) == EXIT_UNUSABLE
    error = capsys.readouterr().err.strip()
    assert error.startswith("ERROR: ") and len(error.splitlines()) == 1
    assert "2 namespaces hold every input topic the config expects: /cell_1, /cell_2" in error
    assert "choose one with --namespace, e.g. --namespace /cell_1" in error
    assert replay(bag, "--namespace", "/cell_2") == EXIT_OK


def test_no_instruction_in_the_bag_nor_given_is_refused(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "silent", spec=BagSpec(duration_s=2.0, namespace="/demo", commands=False))
    assert replay(bag, instruction=None) == EXIT_UNUSABLE
    error = capsys.readouterr().err
    assert "no instruction: the bag has no /demo/instruction topic; pass --instruction" in error


def test_an_instruction_change_mid_bag_applies_from_its_bag_time(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bag = write_sim_bag(tmp_path / "change", spec=BagSpec(duration_s=3.0, commands=False,
                                                          instructions=((0.0, RED), (CHANGE_S, BLUE))))
    from_bag, fixed = tmp_path / "from_bag", tmp_path / "fixed"
    assert replay(bag, "--out", str(from_bag), instruction=None) == EXIT_OK
    assert f"instruction from /instruction: '{RED}' at 0.000 s, '{BLUE}' at 1.505 s" in capsys.readouterr().out
    assert replay(bag, "--out", str(fixed), instruction=RED) == EXIT_OK
    assert "--instruction overrides the bag's /instruction (2 messages, not replayed)" in capsys.readouterr().out

    change_ns = EPOCH_NS + round(CHANGE_S * NS_PER_S)
    statuses = _messages(from_bag, "/policy_node/status")
    assert {s.instruction for t, s in statuses if t < change_ns} == {RED}
    assert {s.instruction for t, s in statuses if t > change_ns} == {BLUE}
    assert {s.instruction for _, s in _messages(fixed, "/policy_node/status")} == {RED}

    # The policy itself got the new instruction then: chunks from observations before the change are the
    # same as with RED throughout, those after differ.
    def chunks(out: Path) -> dict[int, bytes]:
        return {c.observation_stamp.sec * NS_PER_S + c.observation_stamp.nanosec: c.positions.tobytes()
                for _, c in _messages(out, "/policy_node/action_chunk")}

    changed, same = chunks(from_bag), chunks(fixed)
    assert changed.keys() == same.keys()
    before = [stamp for stamp in changed if stamp < change_ns]
    after = [stamp for stamp in changed if stamp > change_ns]
    assert before and after
    assert all(changed[stamp] == same[stamp] for stamp in before)
    assert all(changed[stamp] != same[stamp] for stamp in after)
