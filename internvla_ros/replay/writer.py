"""Writes what the node would have published to an mcap rosbag2 (version 9), atomically.

The bag is written under a hidden temporary directory next to the destination and renamed into place
only once it is complete, so a failed or interrupted replay never leaves a partial bag under the
requested name. Message definitions are embedded (mcap schemas), so ``ros2 bag play``, Foxglove and
rosbags decode the package's own ActionChunk and PolicyStatus without this package installed.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

from internvla_ros.replay.errors import ReplayError
from internvla_ros.replay.messages import (
    ACTION_CHUNK,
    FLOAT64_MULTI_ARRAY,
    JOINT_TRAJECTORY,
    POLICY_STATUS,
    ChunkMessage,
    MessageFactory,
)
from internvla_ros.replay.topics import TopicMap
from internvla_ros.runtime.commands import ControlOutput
from internvla_ros.runtime.status import StatusReport

BAG_VERSION = 9
TEMP_PREFIX = ".replay-"


class BagWriter:
    """A ReplaySink writing the node's outputs; ``commit`` publishes the bag, ``abort`` removes it."""

    def __init__(self, destination: Path, topics: TopicMap, factory: MessageFactory, overwrite: bool = False) -> None:
        self.destination = destination
        if destination.exists() and not overwrite:
            msg = f"{destination}: already exists; choose another --out or pass --force to replace it"
            raise ReplayError(msg)
        parent = destination.parent
        if not parent.is_dir():
            msg = f"{destination}: the directory {parent} does not exist"
            raise ReplayError(msg)
        self._overwrite = overwrite
        self._factory = factory
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent))
        except OSError as err:
            msg = f"{destination}: cannot create a temporary directory next to it: {err}"
            raise ReplayError(msg) from err
        # Written under the final name inside the temporary directory: the storage file is named after it.
        self._writer = Writer(self._tmp / destination.name, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
        self._connections: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        try:
            self._writer.open()
            for topic in topics.trajectories.values():
                self._add(topic, JOINT_TRAJECTORY)
            for topic in topics.forward.values():
                self._add(topic, FLOAT64_MULTI_ARRAY)
            self._add(topics.action_chunk, ACTION_CHUNK)
            self._add(topics.status, POLICY_STATUS)
        except (WriterError, OSError) as err:
            self.abort()
            msg = f"{destination}: cannot write the bag: {err}"
            raise ReplayError(msg) from err
        self._topics = topics
        self.count = 0

    def _add(self, topic: str, msgtype: str) -> None:
        self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=self._factory.store)
        self._types[topic] = msgtype

    def _write(self, topic: str, stamp_ns: int, message: Any) -> None:
        data = self._factory.serialize(message, self._types[topic])
        try:
            self._writer.write(self._connections[topic], stamp_ns, data)
        except (WriterError, OSError) as err:
            msg = f"{self.destination}: cannot write the bag: {err}"
            raise ReplayError(msg) from err
        self.count += 1

    def on_control(self, output: ControlOutput) -> None:
        for command in output.trajectories:
            self._write(self._topics.trajectories[command.controller], output.stamp_ns,
                        self._factory.trajectory(command))
        for command in output.forward:
            self._write(self._topics.forward[command.controller], output.stamp_ns, self._factory.forward(command))

    def on_chunk(self, chunk: ChunkMessage) -> None:
        self._write(self._topics.action_chunk, chunk.stamp_ns, self._factory.chunk(chunk))

    def on_status(self, status: StatusReport) -> None:
        self._write(self._topics.status, status.stamp_ns, self._factory.status(status))

    def commit(self) -> Path:
        """Closes the bag and moves it to the destination (replacing it with ``overwrite``)."""
        try:
            self._writer.close()
            if self.destination.exists() and self._overwrite:
                shutil.rmtree(self.destination) if self.destination.is_dir() else self.destination.unlink()
            (self._tmp / self.destination.name).rename(self.destination)
        except (WriterError, OSError) as err:
            self.abort()
            msg = f"{self.destination}: cannot finish the bag: {err}"
            raise ReplayError(msg) from err
        shutil.rmtree(self._tmp, ignore_errors=True)
        return self.destination

    def abort(self) -> None:
        """Drops everything written so far; the destination is left untouched."""
        if self._writer.storage is not None:
            with suppress(WriterError, OSError):  # the temporary directory goes anyway
                self._writer.abort()
        shutil.rmtree(self._tmp, ignore_errors=True)
