"""Gathers a replica's requests into batches, waiting for requests that are still arriving.

A request reaches the batch only once its body (1.4 MB for three cameras) has been read and decoded, so
requests sent together reach it tens to hundreds of milliseconds apart on a loaded CPU: a fixed short
wait (``serve.batch``'s) then closes a batch of one. Here the handler says when a request starts
arriving (``arriving()``, around reading its body) and a batch that is not full closes only when no
request is arriving and ``wait_s`` has passed since it began forming, or at ``wait_s * ARRIVING_WAIT_FACTOR``
whatever is arriving. One batch runs at a time; requests arriving while it runs join the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Generic, TypeVar

ARRIVING_WAIT_FACTOR = 4.0  # the longest a batch waits for requests still arriving, in units of wait_s

Item = TypeVar("Item")
Result = TypeVar("Result")


class ArrivalBatcher(Generic[Item, Result]):
    """``await submit(item)`` -> its result from ``run(batch)``, which returns one result per item, in order."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[list[Result]]], max_batch_size: int,
                 wait_s: float) -> None:
        if max_batch_size < 1 or wait_s < 0:
            raise ValueError(f"max_batch_size {max_batch_size} must be >= 1 and wait_s {wait_s} >= 0")
        self._run = run
        self.max_batch_size = max_batch_size
        self.wait_s = wait_s
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._arriving = 0
        self._changed: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Around a request's reading and decoding: the forming batch waits for it."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            self._notify()

    async def submit(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._loop())
        self._notify()
        return await future

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _full(self) -> bool:
        return len(self._pending) >= self.max_batch_size

    async def _until(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Returns when ``done()`` or after ``timeout_s``, re-checking whenever a request comes or goes."""
        deadline = time.monotonic() + timeout_s
        assert self._changed is not None
        while not done() and (left := deadline - time.monotonic()) > 0:
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    async def _loop(self) -> None:
        self._changed = asyncio.Event()
        while self._pending:
            started = time.monotonic()
            await self._until(self._full, self.wait_s)
            spent = time.monotonic() - started
            await self._until(lambda: self._full() or self._arriving == 0,
                              self.wait_s * ARRIVING_WAIT_FACTOR - spent)
            batch, self._pending = self._pending[:self.max_batch_size], self._pending[self.max_batch_size:]
            live = [(item, future) for item, future in batch if not future.done()]  # a caller gone: skipped
            if not live:
                continue
            try:
                results = await self._run([item for item, _ in live])
            except Exception as err:  # every caller of the batch learns why it failed
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if not future.done():
                    future.set_result(result)
