"""Point the ROS 2 message wheels' exported CMake files at this environment's Python and numpy.

The `ros-jazzy-*` wheels are built on another machine, and their `*__rosidl_generator_pyExport.cmake`
files name that machine's Python and numpy include directories. rosidl_generator_py links against
them when it builds our own messages, so they are rewritten to this interpreter's directories.
Idempotent: run it again after installing another message wheel.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

PYTHON_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/include/python3\.\d+")
NUMPY_INCLUDE = re.compile(r"/opt/python/cp3\d+-cp3\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")


def fix(prefix: Path) -> int:
    python_include = sysconfig.get_paths()["include"]
    numpy_include = numpy.get_include()
    changed = 0
    for path in sorted(prefix.glob("share/*/cmake/*__rosidl_generator_pyExport.cmake")):
        text = path.read_text()
        new = NUMPY_INCLUDE.sub(numpy_include, PYTHON_INCLUDE.sub(python_include, text))
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


if __name__ == "__main__":
    prefix = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sys.prefix)
    print(f"setup: rewrote include directories in {fix(prefix)} exported CMake file(s)", file=sys.stderr)
