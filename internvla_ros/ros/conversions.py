"""Conversions between ROS time types and the integer nanoseconds used everywhere else."""

from __future__ import annotations

from builtin_interfaces.msg import Duration, Time
from rclpy.clock import Clock
from rclpy.context import Context
from rclpy.time import Time as RclpyTime

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


class RclpyClock:
    """An rclpy clock (ROS time with sim time, or steady time) as the runtime driver's Clock."""

    def __init__(self, clock: Clock, context: Context) -> None:
        self._clock = clock
        self._context = context

    def now_ns(self) -> int:
        return self._clock.now().nanoseconds

    def sleep_until(self, deadline_ns: int) -> None:
        self._clock.sleep_until(RclpyTime(nanoseconds=deadline_ns, clock_type=self._clock.clock_type),
                                context=self._context)
