"""The demo's recorder, one bag per sorting episode, plus the task's topics.

It records what the demo records (joint states, every command, the instruction, cameras as JPEG at
10 Hz) and the task's `task/state` (ground truth), `task/outcome` and `task/summary`. Between
episodes the bag is swapped: `switch_writer` re-creates every connection in the next episode's bag,
so one node (and one discovery) serves the whole run.
"""

from __future__ import annotations

from typing import Any

from rosbags.rosbag2 import Writer
from std_msgs.msg import String

from internvla_ros.ros.demo_recorder import DemoRecorder
from internvla_ros.runtime.config import RuntimeConfig

TASK_TOPICS = ("task/state", "task/outcome", "task/summary")
TASK_QOS_DEPTH = 100


class EpisodeRecorder(DemoRecorder):
    def __init__(self, config: RuntimeConfig, writer: Writer, namespace: str) -> None:
        super().__init__(config, writer, namespace)
        for topic in TASK_TOPICS:
            self._raw(String, f"{namespace}/{topic}", lambda msg, stamp: None, TASK_QOS_DEPTH)

    def switch_writer(self, writer: Writer) -> None:
        """Every topic into `writer` (opened) from now on; the previous writer is the caller's to close."""
        connections: dict[str, Any] = {}
        for topic, connection in self._connections.items():
            connections[topic] = writer.add_connection(topic, connection.msgtype, typestore=self._store)
        self._writer, self._connections = writer, connections

    def pause(self) -> None:
        """Between episodes: nothing is written until start_recording()."""
        self._recording = False
        self.stop_cameras()
