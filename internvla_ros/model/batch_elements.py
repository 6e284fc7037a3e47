"""Running a batch's elements at once, for stages whose calls take one element (exported graphs of batch 1).

One element after another leaves all but one core idle on a CPU whose runtime releases the GIL for a
whole graph call (ONNX Runtime): a batch of four observations on two cores then costs what four single
ones cost. :class:`ElementRunner` runs up to ``workers`` elements at once on threads of its own, each
with the caller's autograd modes (inference mode and grad mode are per thread in torch) and one torch
thread for the host-side glue. Each element's result depends only on its own inputs, so the order in
which threads finish changes nothing: results come back in element order, bit for bit as one after another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Result = TypeVar("Result")


class ElementRunner:
    """``map(fn, n)`` -> ``[fn(0), ..., fn(n - 1)]``, up to ``workers`` at once (1: in the calling thread)."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError(f"batch element workers must be >= 1, got {workers}")
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="batch-element",
                                                initializer=torch.set_num_threads, initargs=(1,))
            return self._pool

    def map(self, fn: Callable[[int], Result], count: int) -> list[Result]:
        if self.workers == 1 or count < 2:
            return [fn(index) for index in range(count)]
        inference, grad = torch.is_inference_mode_enabled(), torch.is_grad_enabled()

        def in_callers_modes(index: int) -> Result:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                return fn(index)

        futures = [self._executor().submit(in_callers_modes, index) for index in range(count)]
        return [future.result() for future in futures]  # the first failure is raised, as one after another

    def serialised(self, fn: Callable[..., None] | None) -> Callable[..., None] | None:
        """``fn`` (e.g. a stage timing hook) made safe to call from the element threads: one call at a time."""
        if fn is None or self.workers == 1:
            return fn
        lock = threading.Lock()

        def locked(*args: object) -> None:
            with lock:
                fn(*args)

        return locked
