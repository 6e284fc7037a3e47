"""Test-wide settings: a ROS domain of our own, DDS kept on this machine, pinned thread counts."""

from __future__ import annotations

import os
import random

# One DDS domain per test run, so that parallel runs (or a robot on the network) never cross-talk.
# Set before rclpy is imported by any test module; subprocesses inherit it.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("INTERNVLA_TEST_DOMAIN_ID") or str(random.SystemRandom().randint(1, 100))
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The transport the package's own processes use (raw camera frames intact on a busy machine), for the
# test processes' own publishers and readers too.
from internvla_ros.ros.transport import use_frame_transport

use_frame_transport()
