"""Inference for a replay: keyed noise, and batches computed ahead of the replay loop in a second thread.

A replay's observations depend only on the bag and the modelled latency, so a second driver that only
plans (no control output, placeholder chunks) finds them ahead of time. :class:`LookaheadInference` runs
that planner in a thread, hands every observation that recomputes foresight in batches to an inference
thread (``InternVLAPolicy.infer_batch``, Cosmos latents through the policy's frame cache, each frame
encoded once; the planner goes on planning meanwhile), and hands the replay loop the result whose
observation has exactly the same inputs.
Anything not found (the planner cannot foresee a hold's restart) is computed inline, so the chunks are
those of :class:`SequentialInference` (batch 1) within float noise (1e-5): every observation's noise
depends on the seed and its stamp only, never on batching, and an observation that reuses foresight K/V
gets the K/V of the one a sequential replay would have kept.

Previews are never decoded: a replay writes no foresight image, and actions do not depend on it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from internvla_ros.model.errors import ModelError
from internvla_ros.runtime.observation import Observation
from internvla_ros.runtime.policy import PolicyResult

if TYPE_CHECKING:
    from internvla_ros.runtime.internvla_policy import InternVLAPolicy

Planner = Callable[["LookaheadInference"], None]
"""Runs the planning replay, calling ``observed(obs)`` for each observation and ``reached(t)`` after each message."""
AHEAD_BATCHES = 3  # results kept ready at most, in batches: bounds memory on long bags


def observation_noise(policy: InternVLAPolicy, seed: int, observation: Observation) -> torch.Tensor:
    """``(1, chunk, max_action_dim)`` noise of ``observation``: standard normal from the seed and its stamp, times
    the policy's ``noise_scale`` (as the node's policy scales its own)."""
    state = np.random.SeedSequence([seed, observation.stamp_ns & (2**64 - 1)]).generate_state(2, np.uint64)
    generator = torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))
    shape = (1, policy.config.chunk_size, policy.config.max_action_dim)
    return torch.randn(shape, generator=generator) * policy.noise_scale


def inputs_key(observation: Observation) -> tuple[Any, ...]:
    """What the chunk depends on, except the pixels and the state values (compared by :func:`same_inputs`)."""
    cameras = tuple(sorted((name, c.slot, c.current_stamp_ns, c.history_stamp_ns)
                           for name, c in observation.cameras.items()))
    return observation.stamp_ns, observation.instruction, observation.recompute_foresight, cameras


def same_inputs(a: Observation, b: Observation) -> bool:
    if inputs_key(a) != inputs_key(b) or not np.array_equal(a.normalized_state, b.normalized_state):
        return False
    return all(np.array_equal(frames.current, b.cameras[name].current)
               and np.array_equal(frames.history, b.cameras[name].history) for name, frames in a.cameras.items())


def _no_preview(observation: Observation) -> Observation:
    return replace(observation, decode_preview=False) if observation.decode_preview else observation


class SequentialInference:
    """Batch 1: each observation inline when the replay asks, as the node computes it (K/V reuse, frame
    cache), with keyed noise."""

    def __init__(self, policy: InternVLAPolicy, seed: int) -> None:
        self.policy = policy
        self.seed = seed
        self._lock = threading.Lock()  # the policy's caches are not shared between threads
        self._holder: Observation | None = None  # whose foresight K/V the policy holds
        self._kept: Observation | None = None  # whose K/V a sequential replay holds

    def reset(self) -> None:
        with self._lock:
            self.policy.reset()
        self._holder = self._kept = None

    def close(self) -> None:
        """Nothing runs beside the replay loop."""

    def recomputes(self, observation: Observation) -> bool:
        """Whether a sequential replay runs the generation pass for ``observation`` (else reuses its K/V)."""
        kept = self._kept
        return (observation.recompute_foresight or kept is None or observation.instruction != kept.instruction
                or not self.policy.info.get("foresight_kv_reuse", True))

    def inline(self, observation: Observation, recompute: bool) -> PolicyResult:
        observation = _no_preview(replace(observation, recompute_foresight=True) if recompute else observation)
        noise = observation_noise(self.policy, self.seed, observation)
        with self._lock:
            return self.policy.infer(observation, noise=noise)

    def infer(self, observation: Observation) -> PolicyResult:
        if self.recomputes(observation):
            result = self.inline(observation, recompute=True)
            self._holder = self._kept = observation
            return result
        if self._holder is not self._kept:  # the K/V came from a batch: rebuild the kept one first
            assert self._kept is not None
            self.inline(self._kept, recompute=True)
            self._holder = self._kept
        return self.inline(observation, recompute=False)


class LookaheadInference(SequentialInference):
    """Batches of ``batch`` observations computed ahead by a planner thread (see the module docstring)."""

    def __init__(self, policy: InternVLAPolicy, seed: int, batch: int, planner: Planner) -> None:
        super().__init__(policy, seed)
        self.batch = batch
        self._planner = planner
        self._cond = threading.Condition()
        self._ready: dict[tuple[Any, ...], tuple[Observation, PolicyResult]] = {}
        self._pending: list[Observation] = []  # planned, not yet handed to the inference thread
        self._computing: list[Observation] = []  # handed over, results not yet ready
        self._reached_ns = -1  # the planner has fed every message up to this time
        self._watermark = -1  # every observation requested at or before this has its result ready, or none comes
        self._inference: ThreadPoolExecutor | None = None
        self._done = False
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.hits = self.misses = 0

    def reset(self) -> None:
        self.close()
        super().reset()
        self._ready.clear()
        self._pending.clear()
        self._computing.clear()
        self._reached_ns = self._watermark = -1
        self._done, self._stop, self._error = False, False, None
        self.hits = self.misses = 0
        self._threads = torch.get_num_threads()
        self._inference = ThreadPoolExecutor(1, thread_name_prefix="replay-inference",
                                             initializer=torch.set_num_threads, initargs=(self._threads,))
        self._thread = threading.Thread(target=self._work, name="replay-lookahead", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stops the planner and inference threads (at the end of a replay, or when it failed)."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()  # the planner thread shuts the inference thread down before it ends
            self._thread = None
        self._inference = None

    def infer(self, observation: Observation) -> PolicyResult:
        if self.recomputes(observation):
            found = self._take(observation)
            if found is not None:
                self.hits += 1
                self._kept = observation
                return found
            self.misses += 1
        return super().infer(observation)

    # Replay loop side -----------------------------------------------------------------------------

    def _take(self, observation: Observation) -> PolicyResult | None:
        key = inputs_key(observation)
        with self._cond:
            while True:
                for old in [k for k, (o, _) in self._ready.items() if o.request_ns < observation.request_ns]:
                    del self._ready[old]  # planned, never asked for: frees room for the planner
                self._cond.notify_all()
                if self._error is not None:
                    raise self._error
                if key in self._ready or observation.request_ns <= self._watermark or self._done:
                    break
                self._cond.wait()
            entry = self._ready.pop(key, None)
            self._cond.notify_all()
        if entry is None or not same_inputs(entry[0], observation):
            return None
        return entry[1]

    # Planner thread side --------------------------------------------------------------------------

    def observed(self, observation: Observation) -> None:
        """The planner requested ``observation``."""
        if observation.recompute_foresight:  # the others reuse K/V: computed inline, as a sequential replay does
            with self._cond:
                self._pending.append(observation)

    def placeholder(self) -> Placeholder:
        """The planner's policy: reports each observation, answers with a zero chunk."""
        return Placeholder(self.observed, (self.policy.config.chunk_size, self.policy.config.max_action_dim))

    def reached(self, now_ns: int) -> None:
        """The planner has fed every message up to ``now_ns``: hand over a full batch, publish the watermark."""
        with self._cond:
            if len(self._pending) >= self.batch:
                self._hand_over()
            while len(self._ready) + len(self._computing) >= AHEAD_BATCHES * self.batch and not self._stop:
                self._cond.wait()
            if self._stop:
                raise _Stopped
            self._reached_ns = now_ns
            self._publish()

    def _publish(self) -> None:
        """The watermark (under ``_cond``): below the first observation without a result yet."""
        waiting = [batch[0].request_ns for batch in (self._computing, self._pending) if batch]
        # Strictly before now: the planner may still request an observation at exactly now_ns (its tick at
        # this message's time runs after the message), and the replay loop must wait for that one.
        self._watermark = min(waiting) - 1 if waiting else self._reached_ns - 1
        self._cond.notify_all()

    def _hand_over(self) -> None:
        """The pending observations to the inference thread (under ``_cond``)."""
        batch, self._pending = self._pending, []
        if batch:
            assert self._inference is not None
            self._computing.extend(batch)
            self._inference.submit(self._compute, batch)

    def _compute(self, batch: list[Observation]) -> None:
        """The inference thread: one batch's results into ``_ready`` (none when the model refuses it)."""
        results: list[PolicyResult] | None = None
        try:
            noise = torch.cat([observation_noise(self.policy, self.seed, o) for o in batch])
            with self._lock:
                results = self.policy.infer_batch([_no_preview(o) for o in batch], noise=noise, cache_latents=True)
        except ModelError:
            pass  # computed inline when asked for, where each observation fails (or not) on its own
        except BaseException as err:  # handed to the replay loop, which raises it
            self._error = err
        with self._cond:
            for observation, result in zip(batch, results or [], strict=False):
                self._ready[inputs_key(observation)] = (observation, result)
            del self._computing[:len(batch)]
            self._publish()

    def _work(self) -> None:
        torch.set_num_threads(self._threads)  # OpenMP's thread count is per thread: a new one starts at every core
        finished = False
        try:
            self._planner(self)
            with self._cond:
                self._hand_over()
            finished = True
        except _Stopped:
            pass
        except BaseException as err:  # handed to the replay loop, which raises it
            self._error = err
        assert self._inference is not None
        self._inference.shutdown(wait=True, cancel_futures=not finished)  # what is handed over is computed
        with self._cond:
            self._done = True
            self._cond.notify_all()


class Placeholder:
    """A planning replay's policy (see :meth:`LookaheadInference.placeholder`)."""

    def __init__(self, sink: Callable[[Observation], None], shape: tuple[int, int]) -> None:
        self._sink = sink
        self._actions = np.zeros(shape, np.float32)

    def reset(self) -> None:
        """Nothing is cached."""

    def infer(self, observation: Observation) -> PolicyResult:
        self._sink(observation)
        return PolicyResult(actions=self._actions)


class _Stopped(Exception):
    """The replay loop ended before the planner did."""
