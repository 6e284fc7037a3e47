"""Conversions between ROS time types and the integer nanoseconds used everywhere else."""

from __future__ import annotations

from builtin_interfaces.msg import Duration, Time

NS_PER_S = 1_000_000_000


def time_to_ns(stamp: Time) -> int:
    return stamp.sec * NS_PER_S + stamp.nanosec


def ns_to_time(ns: int) -> Time:
    return Time(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)


def duration_to_ns(duration: Duration) -> int:
    return duration.sec * NS_PER_S + duration.nanosec


def ns_to_duration(ns: int) -> Duration:
    return Duration(sec=ns // NS_PER_S, nanosec=ns % NS_PER_S)
