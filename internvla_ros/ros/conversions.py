"""Conversions between ROS time types and the integer nanoseconds used everywhere else."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from builtin_interfaces.msg import Duration, Time
from rclpy.clock import Clock, ClockChange, JumpHandle, JumpThreshold, ROSClock, TimeJump
from rclpy.duration import Duration as RclpyDuration

from internvla_ros.runtime.config import NS_PER_S
from internvla_ros.runtime.timeutil import stamp_to_ns


def time_to_ns(stamp: Time) -> int:
    return stamp_to_ns(stamp)


def ns_to_time(ns: int) -> Time:
    return Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


def duration_to_ns(duration: Duration) -> int:
    return duration.sec * NS_PER_S + duration.nanosec


def ns_to_duration(ns: int) -> Duration:
    return Duration(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


# Every update of ROS time under sim time (each /clock message) and a change of its source.
CLOCK_UPDATE = JumpThreshold(min_forward=RclpyDuration(nanoseconds=1), min_backward=None, on_clock_change=True)
SOURCE_CHANGES = (ClockChange.ROS_TIME_ACTIVATED, ClockChange.ROS_TIME_DEACTIVATED)


class RclpyClock:
    """An rclpy clock (ROS time with sim time, or steady time) as the runtime driver's Clock.

    Waits run on the steady clock; under sim time they also end at the /clock update that reaches the
    deadline (sim time advances in steps, and may run faster or slower than real time).
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    def now_ns(self) -> int:
        return self._clock.now().nanoseconds

    def sleep_until(self, deadline_ns: int, timeout_s: float) -> None:
        remaining_s = (deadline_ns - self.now_ns()) / NS_PER_S
        if remaining_s <= 0:
            return
        if not (isinstance(self._clock, ROSClock) and self._clock.ros_time_is_active):
            time.sleep(min(remaining_s, timeout_s))
            return
        reached = threading.Event()

        def on_update(jump: TimeJump) -> None:
            if jump.clock_change in SOURCE_CHANGES or self.now_ns() >= deadline_ns:
                reached.set()

        with self._clock.create_jump_callback(CLOCK_UPDATE, post_callback=on_update):
            if self.now_ns() < deadline_ns:
                reached.wait(timeout_s)

    def on_backward_jump(self, min_backward_ns: int, callback: Callable[[int, int], None]) -> JumpHandle:
        """Calls ``callback(now_ns, jump_ns)`` right after ROS time jumped back by at least min_backward_ns
        (``ros2 bag play --loop``, a simulation reset) or its source changed (sim time switched on or off).
        Runs in the thread that sets the time (the executor's /clock callback): keep it short. The handle
        keeps the callback registered until its unregister()."""
        threshold = JumpThreshold(min_forward=None, min_backward=RclpyDuration(nanoseconds=-min_backward_ns),
                                  on_clock_change=True)

        def on_jump(jump: TimeJump) -> None:
            callback(self.now_ns(), jump.delta.nanoseconds)

        return self._clock.create_jump_callback(threshold, post_callback=on_jump)
