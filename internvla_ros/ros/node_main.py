"""One way for a plain (non-lifecycle) node process to spin until Ctrl-C and exit with a clear code."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from internvla_ros.ros.transport import use_frame_transport
from internvla_ros.runtime.errors import RuntimeConfigError


class SigintFlag:
    """Set once SIGINT arrives. rclpy's handler (installed by ``rclpy.init``) passes the signal on to the Python
    handler that was there before it: this one, which raises KeyboardInterrupt as Python's own does."""

    def __init__(self) -> None:
        self.raised = False
        self._previous: Any = None
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.raised = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def spin_node(make_node: Callable[[], Node], args: list[str] | None = None) -> int:
    """Spin ``make_node()``; 0 on Ctrl-C or shutdown, 2 with the reason on a bad config or parameter."""
    use_frame_transport()
    interrupted = SigintFlag()
    rclpy.init(args=args)
    try:
        rclpy.spin(make_node())
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except (RuntimeConfigError, ValueError) as err:  # a bad config file or parameter
        print(f"ERROR: {err}", flush=True)
        return 2
    except Exception:
        if rclpy.ok() and not interrupted.raised:
            raise
        # Ctrl-C: a callback that published while it shut the context down, or the KeyboardInterrupt turned
        # into another error inside rclpy's bindings (a message take interrupted mid-conversion), is an
        # ordinary shutdown.
    finally:
        # rclpy's SIGINT handler may shut the context down between try_shutdown's check and its call.
        with contextlib.suppress(RuntimeError):
            rclpy.try_shutdown()
        interrupted.restore()
    return 0
