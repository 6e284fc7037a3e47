"""One way for a plain (non-lifecycle) node process to spin until Ctrl-C and exit with a clear code."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from internvla_ros.ros.transport import use_frame_transport
from internvla_ros.runtime.errors import RuntimeConfigError


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Spin ``make_node()``; 0 on Ctrl-C or shutdown, 2 with the reason on a bad config or parameter."""
    use_frame_transport()
    rclpy.init(args=args)
    try:
        rclpy.spin(make_node())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RuntimeConfigError, ValueError) as err:  # a bad config file or parameter
        print(f"ERROR: {err}", flush=True)
        return 2
    except Exception:
        if rclpy.ok():
            raise
        # A callback that published while SIGINT shut the context down: an ordinary shutdown.
    finally:
        # rclpy's SIGINT handler may shut the context down between try_shutdown's check and its call.
        with contextlib.suppress(RuntimeError):
            rclpy.try_shutdown()
    return 0
