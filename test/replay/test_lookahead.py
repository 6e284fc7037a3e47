"""Batched look-ahead inference: the sequential replay's chunks (within 1e-5), the same bytes every run."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from test.replay.bagfactory import BagSpec, write_sim_bag
from test.replay.conftest import Replay

CHUNK_TOPIC = "/policy_node/action_chunk"
EXIT_UNUSABLE = 2


def _files(bag: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(bag.iterdir())}


def _chunks(bag: Path) -> list[tuple[int, int, np.ndarray]]:
    """(stamp, observation stamp, positions) of every chunk the replay wrote."""
    with AnyReader([bag]) as reader:
        chunks = []
        for connection, _, raw in reader.messages():
            if connection.topic == CHUNK_TOPIC:
                msg = reader.deserialize(raw, connection.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                observed = msg.observation_stamp.sec * 1_000_000_000 + msg.observation_stamp.nanosec
                chunks.append((stamp, observed, np.asarray(msg.positions, dtype=np.float64)))
    return chunks


@pytest.mark.parametrize("backend", ["torch", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_batched_replay_is_byte_identical_and_matches_the_sequential_one(
        replay: Replay, tmp_path: Path, capsys: pytest.CaptureFixture[str], backend: str) -> None:
    # The joint_states gap makes the runtime hold and restart: the restart's observation reuses the
    # foresight K/V of an observation that was computed in a batch (rebuilt inline). On ONNX Runtime a
    # batch's observations are computed two at a time, on threads that finish in any order.
    bag = write_sim_bag(tmp_path / "bag", spec=BagSpec(duration_s=4.0, joint_gap_s=(2.0, 2.3)))
    batched, again, sequential = (tmp_path / name / "out" for name in ("batched", "again", "sequential"))
    for out in (batched, again, sequential):
        out.parent.mkdir()
    assert replay(bag, "--out", str(batched), "--batch", "4", "--backend", backend) == 0
    summary = capsys.readouterr().out
    assert replay(bag, "--out", str(again), "--batch", "4", "--backend", backend) == 0
    assert replay(bag, "--out", str(sequential), "--batch", "1", "--backend", backend) == 0
    assert capsys.readouterr().out.count(f"policy: {backend}") == 2
    assert _files(batched) == _files(again)
    assert f"policy: {backend}" in summary  # the backend asked for ran (and, below, for each replay)
    line = next(x for x in summary.splitlines() if x.startswith("inference: "))
    ahead, total = (int(word) for word in line.split()[1:4:2])
    assert total >= 8 and ahead >= total // 2, line
    ours, theirs = _chunks(batched), _chunks(sequential)
    assert len(ours) >= 5
    assert [c[:2] for c in ours] == [c[:2] for c in theirs]
    assert max(float(np.abs(a[2] - b[2]).max()) for a, b in zip(ours, theirs, strict=True)) <= 1e-5


def test_batch_below_one_is_refused(replay: Replay, sim_bag: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert replay(sim_bag, "--batch", "0") == EXIT_UNUSABLE
    assert "--batch must be >= 1" in capsys.readouterr().err


def test_a_failing_batch_ends_the_replay_with_its_error_and_no_thread_left(
        replay: Replay, sim_bag: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error computing ahead (not the model refusing an input) reaches the replay loop, which raises it;
    the planner and inference threads are gone afterwards, so nothing hangs."""
    from internvla_ros.runtime.internvla_policy import InternVLAPolicy

    def broken(*_: object, **__: object) -> list:
        raise RuntimeError("out of memory while computing ahead")

    monkeypatch.setattr(InternVLAPolicy, "infer_batch", broken)
    with pytest.raises(RuntimeError, match="out of memory while computing ahead"):
        replay(sim_bag, "--batch", "4")
    left = [t.name for t in threading.enumerate() if t.name.startswith(("replay-lookahead", "replay-inference"))]
    assert left == []
