#!/usr/bin/env python3
"""Copies a time window of some topics of a rosbag2 into a new mcap bag (for small replay fixtures).

    scripts/trim_bag.py IN_BAG OUT_BAG --start 5.0 --duration 10.0 --topics joint_states instruction ...

``--start`` is seconds after the bag's first message; a topic is kept when its name ends with one of
``--topics``. Latched topics (the instruction) are kept from before the window too, restamped to its start,
as a late-joining subscriber would receive them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rosbags.rosbag2 import Reader, StoragePlugin, Writer

from internvla_ros.bags.types import typestore

LATCHED = ("instruction",)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bag", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--start", type=float, default=0.0)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--topics", nargs="+", required=True)
    args = parser.parse_args()
    store = typestore()
    with Reader(args.bag) as reader:
        begin = reader.start_time + int(args.start * 1e9)
        end = begin + int(args.duration * 1e9)
        chosen = [c for c in reader.connections if any(c.topic.endswith(t) for t in args.topics)]
        writer = Writer(args.out, version=9, storage_plugin=StoragePlugin.MCAP)
        writer.open()
        try:
            out = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=store,
                                               offered_qos_profiles=c.ext.offered_qos_profiles)
                   for c in chosen}
            for connection, stamp, data in reader.messages(connections=chosen, stop=end):
                latched = any(connection.topic.endswith(t) for t in LATCHED)
                if stamp >= begin or latched:
                    writer.write(out[connection.id], max(stamp, begin), data)
        finally:
            writer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
