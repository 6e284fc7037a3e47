"""A tiny LeRobot dataset (a 6-joint arm, one second, teleoperated) and the shrunk reference model to train on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from internvla_ros.learning.dataset_convert import ConversionOptions, convert_bags
from internvla_ros.paths import share_dir
from test.learning.bagfactory import ARM_YAML, Spec, write_bag

TINY_MODEL = share_dir() / "test" / "fixtures" / "internvla_a1_reference" / "case_a"  # 2.3 M parameters


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train")
    config = root / "arm6.yaml"
    config.write_text(ARM_YAML)
    bag = write_bag(root / "bag", config, Spec(duration_s=1.0, teleop_topic="/leader/joint_states", commands=False,
                                               image_size=(32, 40)))
    convert_bags([bag], config, root / "ds", ConversionOptions(action_topic="/leader/joint_states"))
    return root / "ds"
