"""Opens a rosbag2 (mcap or sqlite3, metadata versions 4-9, split, zstd-compressed) and streams messages.

rosbags' ``AnyReader`` reads a bag directory through its metadata.yaml. Without one (a recording that
was killed before rosbag2 wrote it), a directory's storage files are opened directly: mcap files carry
their own schemas and statistics, so such a bag is still read completely; the replay says so. Messages
are streamed in log-time order and deserialised one at a time, so memory does not grow with the bag.
"""

from __future__ import annotations

import re
import sqlite3
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from rosbags.highlevel import AnyReader, AnyReaderError
from rosbags.rosbag2 import ReaderError
from rosbags.typesys.store import Typestore

from internvla_ros.replay.errors import ReplayError

METADATA_FILE = "metadata.yaml"
STORAGE_SUFFIXES = (".mcap", ".db3")
SPLIT_INDEX = re.compile(r"_(\d+)$")
# What rosbags raises on damaged files besides its own classes: a truncated mcap record (struct),
# a damaged sqlite database, bytes that do not decode.
BAG_ERRORS = (AnyReaderError, ReaderError, OSError, sqlite3.Error, struct.error, ValueError, KeyError, EOFError,
              AssertionError, IndexError)


@dataclass(frozen=True)
class TopicInfo:
    msgtype: str
    count: int


@dataclass(frozen=True)
class BagInfo:
    path: Path
    files: tuple[Path, ...]  # what was opened: the directory, or its storage files without metadata
    metadata_found: bool
    start_ns: int
    end_ns: int  # the last message's log time
    message_count: int
    topics: Mapping[str, TopicInfo]

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    def describe_topics(self) -> str:
        if not self.topics:
            return "(none)"
        return ", ".join(f"{name} [{info.msgtype}, {info.count}]" for name, info in sorted(self.topics.items()))


def _split_key(path: Path) -> tuple[int, str]:
    match = SPLIT_INDEX.search(path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def storage_paths(path: Path) -> tuple[tuple[Path, ...], bool]:
    """What to hand to AnyReader, and whether a metadata.yaml describes the bag."""
    if not path.exists():
        msg = f"{path}: no such bag"
        raise ReplayError(msg)
    if path.is_file():
        if path.suffix not in STORAGE_SUFFIXES:
            msg = f"{path}: not a rosbag2 directory or storage file ({', '.join(STORAGE_SUFFIXES)})"
            raise ReplayError(msg)
        return (path,), False
    if (path / METADATA_FILE).is_file():
        return (path,), True
    files = sorted((p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES), key=_split_key)
    if not files:
        msg = f"{path}: neither {METADATA_FILE} nor storage files ({', '.join(STORAGE_SUFFIXES)}) found"
        raise ReplayError(msg)
    if len({p.suffix for p in files}) > 1:
        msg = f"{path}: no {METADATA_FILE}, and storage files of two formats: {[p.name for p in files]}"
        raise ReplayError(msg)
    return tuple(files), False


class BagReader(AbstractContextManager["BagReader"]):
    """One input bag: its topics up front, then a time-ordered stream of deserialised messages."""

    def __init__(self, path: Path, default_typestore: Typestore) -> None:
        self.path = path
        files, self._metadata_found = storage_paths(path)
        self._files = files
        try:
            self._reader = AnyReader(list(files), default_typestore=default_typestore)
        except BAG_ERRORS as err:
            raise _bag_error(path, err) from err
        self.info: BagInfo | None = None

    def open(self) -> BagInfo:
        try:
            self._reader.open()
            reader = self._reader
            topics = {name: TopicInfo(t.msgtype or "(several types)", t.msgcount) for name, t in reader.topics.items()}
            count = reader.message_count
            start, end = (reader.start_time, reader.end_time - 1) if count else (0, 0)
        except BAG_ERRORS as err:
            raise _bag_error(self.path, err) from err
        self.info = BagInfo(self.path, self._files, self._metadata_found, start, end, count, topics)
        return self.info

    def __enter__(self) -> BagReader:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._reader.stack is not None:
            with suppress(*BAG_ERRORS):  # already failing: the first error is the one reported
                self._reader.close()

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, int, Any]]:
        """(topic, log time ns, message) for the given topics, in log-time order."""
        wanted = set(topics)
        connections = [c for c in self._reader.connections if c.topic in wanted]
        if not connections:
            return
        stream = self._reader.messages(connections=connections)
        while True:
            try:
                connection, stamp, raw = next(stream)
                message = self._reader.deserialize(raw, connection.msgtype)
            except StopIteration:
                return
            except BAG_ERRORS as err:
                raise _bag_error(self.path, err) from err
            yield connection.topic, stamp, message


def _bag_error(path: Path, err: BaseException) -> ReplayError:
    detail = " ".join(str(a) for a in err.args) or type(err).__name__
    return ReplayError(f"{path}: cannot read the bag (damaged, truncated or not a rosbag2?): {detail}; an interrupted "
                       "recording may need `ros2 bag reindex` or `mcap recover` first")


