"""The DDS transport of the package's processes: Fast DDS with room for whole raw camera frames.

Fast DDS's defaults lose raw frames to best-effort readers on a busy machine (see
config/fastdds_frames.xml for the measurement), so every process of the package that joins the ROS
graph loads that profile before `rclpy.init`, unless the user chose a profile of their own or another
middleware.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

from internvla_ros.paths import config_path

PROFILE_FILE = "fastdds_frames.xml"
# Fast DDS 2.x (Jazzy) reads the first, 3.x the second.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
FAST_DDS = ("", "rmw_fastrtps_cpp", "rmw_fastrtps_dynamic_cpp")  # "": the Jazzy default, Fast DDS


def use_frame_transport(environ: MutableMapping[str, str] = os.environ) -> Path | None:
    """Point Fast DDS at the package's profile; returns it, or None where the user's setting stands."""
    if environ.get("RMW_IMPLEMENTATION", "") not in FAST_DDS:
        return None
    if any(environ.get(variable) for variable in PROFILE_VARIABLES):
        return None
    profile = config_path(PROFILE_FILE)
    if not profile.is_file():  # an install without the package's config/: Fast DDS's defaults, as before
        return None
    for variable in PROFILE_VARIABLES:
        environ[variable] = str(profile)
    return profile
