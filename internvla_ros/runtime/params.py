"""Typed, validated reads from flat ROS-style parameters (dotted names -> scalars or flat lists).

The policy node receives its parameters from rcl as dotted names; the YAML loader flattens the same
file the same way, so both paths go through one validator. ROS parameters are typed: an integer where a
double is declared is rejected by rclpy, so ``50`` is refused for a float field here too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from internvla_ros.runtime.errors import RuntimeConfigError

ParameterValue = bool | int | float | str | list[bool] | list[int] | list[float] | list[str]
_MISSING = object()


def flatten_parameters(tree: Mapping[str, Any], prefix: str = "") -> dict[str, ParameterValue]:
    """Nested dicts -> dotted names, the way rcl flattens a ``ros__parameters`` block."""
    flat: dict[str, ParameterValue] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key:
            msg = f"{prefix}{key!r}: parameter names must be non-empty strings"
            raise RuntimeConfigError(msg)
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_parameters(value, prefix=f"{name}."))
            continue
        _check_ros_value(name, value)
        flat[name] = list(value) if isinstance(value, list) else value
    return flat


def _check_ros_value(name: str, value: Any) -> None:
    if value is None:
        msg = f"{name}: empty value; ROS parameters need a typed value"
        raise RuntimeConfigError(msg)
    if isinstance(value, bool | int | float | str):
        return
    if not isinstance(value, list):
        msg = f"{name}: {type(value).__name__} is not a ROS parameter type (scalar or flat list)"
        raise RuntimeConfigError(msg)
    if not value:
        msg = f"{name}: empty list; ROS cannot infer the type of an empty list, leave the key out"
        raise RuntimeConfigError(msg)
    kinds = {type(item) for item in value}
    if len(kinds) != 1 or next(iter(kinds)) not in (bool, int, float, str):
        msg = f"{name}: a ROS list parameter holds one scalar type, got {sorted(k.__name__ for k in kinds)}"
        raise RuntimeConfigError(msg)


def _type_name(value: Any) -> str:
    return type(value).__name__


class ParameterReader:
    """Reads each parameter once with its type and range; ``finish()`` rejects keys nobody read."""

    def __init__(self, flat: Mapping[str, Any]) -> None:
        self._flat = dict(flat)
        self._used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self._flat

    def children(self, prefix: str) -> set[str]:
        """Names directly below ``prefix`` (e.g. the joint names under ``joints.limits``)."""
        start = f"{prefix}."
        return {key[len(start) :].split(".", 1)[0] for key in self._flat if key.startswith(start)}

    def _get(self, key: str, default: Any) -> Any:
        if key in self._flat:
            self._used.add(key)
            return self._flat[key]
        if default is _MISSING:
            msg = f"{key}: required parameter is missing"
            raise RuntimeConfigError(msg)
        return default

    def real(
        self,
        key: str,
        *,
        low: float,
        high: float,
        default: Any = _MISSING,
        low_open: bool = False,
    ) -> float:
        value = self._get(key, default)
        return _check_float(key, value, low=low, high=high, low_open=low_open)

    def integer(self, key: str, *, low: int, high: int, default: Any = _MISSING) -> int:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"{key}: must be an integer in [{low}, {high}], got {_type_name(value)} {value!r}"
            raise RuntimeConfigError(msg)
        if not low <= value <= high:
            msg = f"{key}: {value} is out of range, allowed [{low}, {high}]"
            raise RuntimeConfigError(msg)
        return value

    def flag(self, key: str, *, default: Any = _MISSING) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            msg = f"{key}: must be true or false, got {_type_name(value)} {value!r}"
            raise RuntimeConfigError(msg)
        return value

    def text(self, key: str, *, choices: Sequence[str] | None = None, default: Any = _MISSING) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or not value:
            msg = f"{key}: must be a non-empty string, got {_type_name(value)} {value!r}"
            raise RuntimeConfigError(msg)
        if choices is not None and value not in choices:
            msg = f"{key}: {value!r} is not allowed, choose one of {list(choices)}"
            raise RuntimeConfigError(msg)
        return value

    def str_list(self, key: str, *, unique: bool = True) -> tuple[str, ...]:
        value = self._get(key, _MISSING)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            msg = f"{key}: must be a non-empty list of non-empty strings, got {value!r}"
            raise RuntimeConfigError(msg)
        if unique and len(set(value)) != len(value):
            duplicates = sorted({v for v in value if value.count(v) > 1})
            msg = f"{key}: names must be unique, duplicated {duplicates}"
            raise RuntimeConfigError(msg)
        return tuple(value)

    def bool_list(self, key: str, *, length: int) -> tuple[bool, ...]:
        value = self._get(key, _MISSING)
        if not isinstance(value, list) or not all(isinstance(v, bool) for v in value):
            msg = f"{key}: must be a list of {length} booleans, got {value!r}"
            raise RuntimeConfigError(msg)
        if len(value) != length:
            msg = f"{key}: has {len(value)} entries, must have {length} (one per joint)"
            raise RuntimeConfigError(msg)
        return tuple(value)

    def finish(self) -> None:
        unknown = sorted(set(self._flat) - self._used)
        if unknown:
            msg = f"{unknown[0]}: unknown parameter (all unknown: {unknown})"
            raise RuntimeConfigError(msg)


def _check_float(key: str, value: Any, *, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, float):
        hint = f" (write {value}.0: ROS parameters are typed)" if isinstance(value, int) else ""
        allowed = _range_text(low, high, low_open)
        msg = f"{key}: must be a float in {allowed}, got {_type_name(value)} {value!r}{hint}"
        raise RuntimeConfigError(msg)
    too_low = value <= low if low_open else value < low
    if not math.isfinite(value) or too_low or value > high:
        msg = f"{key}: {value} is out of range, allowed {_range_text(low, high, low_open)}"
        raise RuntimeConfigError(msg)
    return value


def _range_text(low: float, high: float, low_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {high}]"
