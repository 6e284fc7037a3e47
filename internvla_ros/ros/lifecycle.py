"""A lifecycle node that keeps answering while a transition works, and never fails a transition silently.

rclpy runs a transition inside the `change_state` service callback; on a single-threaded executor a
configure that loads a large model for minutes blocks `get_state`, the status and every service.
Here the transition keeps ROS semantics exactly (configure returns only when the model is loaded, so
"inactive" means ready to activate, and `get_state` says "configuring" meanwhile) and runs on a thread
of its own: `TransitionExecutor` executes the lifecycle callback group on a small pool and every other
callback inline on the spinning thread, so inputs cost what they cost on a SingleThreadedExecutor
(rclpy's MultiThreadedExecutor hands every callback to a pool, which costs more CPU than the callbacks).

rclpy also turns an exception in a transition callback into ERROR without a log line, and a
`change_state` that is not allowed in the current state raises out of the executor (the node dies).
`transition()` logs every failure with the transition's name, and the guarded `change_state` answers
success=False, with the reason in the log, for a transition that is not allowed or while another runs.
"""

from __future__ import annotations

import functools
import threading
import traceback
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import lifecycle_msgs.msg
import lifecycle_msgs.srv
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.exceptions import InvalidHandle
from rclpy.executors import ConditionReachedException, ShutdownException, SingleThreadedExecutor, TimeoutException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.lifecycle.node import LifecycleNodeMixin
from rclpy.node import Node

# Two threads: one may run a long transition while the other answers get_state (and refuses a second
# change_state at once).
LIFECYCLE_THREADS = 2
TARGET_STATES = {"configure": "inactive", "activate": "active", "deactivate": "inactive", "cleanup": "unconfigured",
                 "shutdown": "finalized", "error": "unconfigured"}

NodeT = TypeVar("NodeT", bound="AnsweringLifecycleNode")
Transition = Callable[[NodeT, LifecycleState], TransitionCallbackReturn]


def transition(name: str) -> Callable[[Transition], Transition]:
    """Wraps a transition callback: an exception is logged with the transition's name and becomes ERROR
    (rclpy then runs on_error); a FAILURE or ERROR result is logged with the state the node is left in."""

    def wrap(callback: Transition) -> Transition:
        @functools.wraps(callback)
        def run(node: NodeT, state: LifecycleState) -> TransitionCallbackReturn:
            try:
                result = callback(node, state)
            except Exception as err:  # rclpy would swallow it: the operator must see why
                node.get_logger().error(f"{name} failed with {type(err).__name__}: {err} (from state "
                                        f"'{state.label}'):\n{traceback.format_exc().rstrip()}")
                return TransitionCallbackReturn.ERROR
            if result == TransitionCallbackReturn.SUCCESS:
                node.get_logger().info(f"{name}: now {TARGET_STATES[name]}")
            elif result == TransitionCallbackReturn.FAILURE:
                node.get_logger().error(f"{name} failed: the node stays {state.label}")
            else:
                node.get_logger().error(f"{name} returned ERROR: the node releases everything (on_error)")
            return result

        return run

    return wrap


class AnsweringLifecycleNode(LifecycleNode):
    """LifecycleNode whose lifecycle services live in `lifecycle_group` (see TransitionExecutor)."""

    def __init__(self, node_name: str, **kwargs: Any) -> None:
        # LifecycleNode.__init__, with the callback group rclpy's LifecycleNodeMixin accepts.
        Node.__init__(self, node_name, **kwargs)
        self.lifecycle_group = ReentrantCallbackGroup()
        LifecycleNodeMixin.__init__(self, enable_communication_interface=True, callback_group=self.lifecycle_group)
        self._transition_lock = threading.Lock()
        change_state = self._service_change_state
        change_state.callback = self._guarded_change_state(change_state.callback)

    @property
    def lifecycle_state(self) -> str:
        """The current state's label ("unconfigured", "configuring", "inactive", ...)."""
        return self._state_machine.current_state[1]

    def _guarded_change_state(self, change_state: Callable[..., Any]) -> Callable[..., Any]:
        def run(request: lifecycle_msgs.srv.ChangeState.Request,
                response: lifecycle_msgs.srv.ChangeState.Response) -> lifecycle_msgs.srv.ChangeState.Response:
            wanted = request.transition.label or str(request.transition.id)
            if not self._transition_lock.acquire(blocking=False):
                self.get_logger().error(f"change_state '{wanted}' refused: the node is {self.lifecycle_state}; "
                                        "wait until that transition has finished")
                response.success = False
                return response
            try:
                return change_state(request, response)
            except Exception as err:  # rclpy raises for a transition the state machine does not have
                self.get_logger().error(f"change_state '{wanted}' refused in state '{self.lifecycle_state}': {err}")
                response.success = False
                return response
            finally:
                self._transition_lock.release()

        return run

    def run_transitions(self, *triggers: Callable[[], TransitionCallbackReturn]) -> bool:
        """Runs triggers (self.trigger_configure, ...) in order under the transition lock until one fails."""
        with self._transition_lock:
            return all(trigger() == TransitionCallbackReturn.SUCCESS for trigger in triggers)


class TransitionExecutor(SingleThreadedExecutor):
    """Runs the nodes' `lifecycle_group` callbacks on a pool of their own and all others inline.

    The custom-executor pattern of rclpy's examples (a priority executor): wait for ready callbacks, then
    dispatch each by its callback group. An exception in a pooled callback is raised from spin, as
    SingleThreadedExecutor does for inline ones.
    """

    def __init__(self, *, context: Any = None) -> None:
        super().__init__(context=context)
        self._pool = ThreadPoolExecutor(LIFECYCLE_THREADS, thread_name_prefix="lifecycle")
        self._pending: list[Future[Any]] = []

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        """What SingleThreadedExecutor does, except that lifecycle callbacks go to the pool.

        A transition (cleanup, shutdown) destroys subscriptions and services on its pool thread while this
        thread builds a wait set or walks the ready entities: rclpy then raises InvalidHandle for an entity
        destroyed in between, which would end the spin loop (and the node). That spin is abandoned instead;
        the next one waits on the entities that still exist.
        """
        try:
            handler, entity, node = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ShutdownException, TimeoutException, ConditionReachedException):
            pass
        except InvalidHandle:
            self._cb_iter = None  # that wait set held a destroyed entity: build a new one next time
        else:
            if entity is not None and entity.callback_group is getattr(node, "lifecycle_group", None):
                self._pending.append(self._pool.submit(_run, handler))
            else:
                _run(handler)
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()  # raise any exception, as for inline callbacks

    def shutdown(self, timeout_sec: float | None = None) -> bool:
        done = super().shutdown(timeout_sec)
        self._pool.shutdown(wait=True, cancel_futures=True)
        return done


def _run(handler: Any) -> None:
    handler()
    handler.result()  # the task keeps its callback's exception: raise it


def state_label(state_id: int) -> str:
    """lifecycle_msgs State id -> label, for messages."""
    return {value: name.removeprefix("PRIMARY_STATE_").removeprefix("TRANSITION_STATE_").lower()
            for name, value in vars(lifecycle_msgs.msg.State).items()
            if name.startswith(("PRIMARY_STATE_", "TRANSITION_STATE_"))}.get(state_id, str(state_id))
