"""The replica's batcher on a real event loop: a batch waits for a request still being read, closes at once
when full, closes after the wait when nothing is arriving, and one failing batch fails only its callers."""

from __future__ import annotations

import asyncio

import pytest

from internvla_ros.serve.batcher import ARRIVING_WAIT_FACTOR, ArrivalBatcher

WAIT_S = 0.05


class Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    async def __call__(self, batch: list[int]) -> list[int]:
        self.batches.append(batch)
        await asyncio.sleep(0)
        if self.fail_on in batch:
            raise RuntimeError(f"item {self.fail_on} failed")
        return [10 * item for item in batch]


def test_a_batch_waits_for_a_request_whose_body_is_still_arriving() -> None:
    async def scenario() -> Recorder:
        run = Recorder()
        batcher = ArrivalBatcher(run, max_batch_size=4, wait_s=WAIT_S)

        async def late() -> int:
            with batcher.arriving():  # reading a body for longer than the wait
                await asyncio.sleep(2 * WAIT_S)
            return await batcher.submit(2)

        arriving = asyncio.create_task(late())
        await asyncio.sleep(0)
        assert await asyncio.gather(batcher.submit(1), arriving) == [10, 20]
        return run

    assert asyncio.run(scenario()).batches == [[1, 2]]


def test_a_full_batch_runs_at_once_and_a_lone_request_after_the_wait() -> None:
    async def scenario() -> tuple[Recorder, float, float]:
        run = Recorder()
        batcher = ArrivalBatcher(run, max_batch_size=2, wait_s=10.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await asyncio.gather(batcher.submit(1), batcher.submit(2)) == [10, 20]
        full_s = loop.time() - start
        batcher.wait_s = WAIT_S
        start = loop.time()
        assert await batcher.submit(3) == 30
        return run, full_s, loop.time() - start

    run, full_s, lone_s = asyncio.run(scenario())
    assert run.batches == [[1, 2], [3]]
    assert full_s < 5.0  # not the 10 s wait
    assert WAIT_S * 0.9 <= lone_s < WAIT_S * ARRIVING_WAIT_FACTOR + 5.0


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    async def scenario() -> Recorder:
        run = Recorder(fail_on=1)
        batcher = ArrivalBatcher(run, max_batch_size=2, wait_s=WAIT_S)
        outcomes = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        assert [str(o) for o in outcomes] == ["item 1 failed"] * 2
        assert await batcher.submit(3) == 30
        return run

    assert asyncio.run(scenario()).batches == [[1, 2], [3]]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size 0 must be >= 1"):
        ArrivalBatcher(Recorder(), max_batch_size=0, wait_s=WAIT_S)
