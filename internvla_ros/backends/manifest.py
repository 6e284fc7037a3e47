"""``manifest.json`` of an export: what each graph takes and returns, and which model it came from.

The SHA-256 of the source files is recorded at export time and checked at load time, so graphs
exported from another model, or from this model before its weights changed, are refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from internvla_ros.backends.errors import BackendError, ExportMismatchError
from internvla_ros.model.checkpoint import WEIGHTS_FILE
from internvla_ros.model.config import ARCH_FILE, CONFIG_FILE

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 5
"""Bumped whenever the graphs' inputs/outputs or numerics change; an older export is then refused.

2: Cosmos GroupNorms in two passes, Cosmos in the experts' precision.
3: the guidance_step graph (real-time chunking).
4: the Cosmos encoder takes one frame.
5: Cosmos GroupNorms as shifted InstanceNormalization, M-RoPE without scatters, fused RMSNorms.
"""
REQUIRED_SOURCE_FILES = (WEIGHTS_FILE, CONFIG_FILE)
OPTIONAL_SOURCE_FILES = (ARCH_FILE,)
HASH_BLOCK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def source_hashes(model_dir: Path) -> dict[str, str]:
    """SHA-256 of the files that define a model (weights, config, explicit sizes)."""
    hashes = {}
    for name in (*REQUIRED_SOURCE_FILES, *OPTIONAL_SOURCE_FILES):
        path = model_dir / name
        if path.is_file():
            hashes[name] = sha256_file(path)
        elif name in REQUIRED_SOURCE_FILES:
            raise BackendError(f"{path}: file not found (a model directory needs {', '.join(REQUIRED_SOURCE_FILES)})")
    return hashes


def model_key(hashes: dict[str, str], dtype: str) -> str:
    """Short id of (model files, precision, export format): names cache directories."""
    text = json.dumps({"files": hashes, "dtype": dtype, "format": FORMAT_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), tuple(int(d) for d in data["shape"]), str(data["dtype"]))


@dataclass(frozen=True)
class GraphSpec:
    file: str
    bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    data_file: str | None = None
    """Side file with the weights of a graph too large for one protobuf (``<file>.data``)."""
    data_bytes: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GraphSpec:
        return cls(str(data["file"]), int(data["bytes"]), tuple(TensorSpec.from_json(t) for t in data["inputs"]),
                   tuple(TensorSpec.from_json(t) for t in data["outputs"]), data.get("data_file"),
                   int(data.get("data_bytes", 0)))

    def files(self) -> dict[str, int]:
        return {self.file: self.bytes, **({self.data_file: self.data_bytes} if self.data_file else {})}


@dataclass(frozen=True)
class Manifest:
    format: int
    dtype: str
    opset: int
    exporter: str
    versions: dict[str, str]
    source_dir: str
    source_files: dict[str, str]
    layout: dict[str, Any]
    graphs: dict[str, GraphSpec]

    @property
    def key(self) -> str:
        return model_key(self.source_files, self.dtype)

    def write(self, directory: Path) -> None:
        """Written last, atomically: a directory without it holds no usable export."""
        tmp = directory / (MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        tmp.replace(directory / MANIFEST_FILE)

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise BackendError(f"{path}: no export here; create one with "
                               f"`internvla export MODEL_DIR --out {directory}`")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT_VERSION:
                raise ExportMismatchError(
                    f"{path}: export format {data.get('format')!r}, this version reads {FORMAT_VERSION}; "
                    f"re-export with `internvla export MODEL_DIR --out {directory}`")
            graphs = {name: GraphSpec.from_json(spec) for name, spec in data["graphs"].items()}
            return cls(int(data["format"]), str(data["dtype"]), int(data["opset"]), str(data["exporter"]),
                       dict(data["versions"]), str(data["source_dir"]), dict(data["source_files"]),
                       dict(data["layout"]), graphs)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise BackendError(f"{path}: not a valid export manifest ({err}); re-export with "
                               f"`internvla export MODEL_DIR --out {directory}`") from err

    def verify_source(self, model_dir: Path, engine_dir: Path) -> None:
        """Refuse an export whose source files differ from ``model_dir``'s, naming each difference."""
        found = source_hashes(model_dir)
        recorded = self.source_files
        differences = [
            f"{name}: model has {found.get(name, 'no file')[:12]}, export has {recorded.get(name, 'no file')[:12]}"
            for name in sorted(set(found) | set(self.source_files))
            if found.get(name) != self.source_files.get(name)
        ]
        if not differences:
            return
        same_dir = Path(self.source_dir).resolve() == model_dir.resolve()
        why = ("is stale: the model changed since it was exported" if same_dir
               else f"was made from another model ({self.source_dir})")
        raise ExportMismatchError(
            f"export {engine_dir} {why}; SHA-256 differs for " + "; ".join(differences)
            + f". Re-export with `internvla export {model_dir} --out {engine_dir}`"
        )

    def check_files(self, engine_dir: Path) -> None:
        """Every graph file present with the size it was written with (cheap; content is checked on load)."""
        for name, spec in self.graphs.items():
            for file, expected in spec.files().items():
                path = engine_dir / file
                size = path.stat().st_size if path.is_file() else None
                if size != expected:
                    state = "missing" if size is None else f"{size} bytes, manifest says {expected}"
                    raise ExportMismatchError(f"{path}: graph {name!r} is {state}; re-export with "
                                              f"`internvla export MODEL_DIR --out {engine_dir}`")


def load_export(engine_dir: Path, model_dir: Path) -> Manifest:
    """The manifest of ``engine_dir``, refused unless it was exported from ``model_dir`` as it is now."""
    manifest = Manifest.read(engine_dir)
    manifest.verify_source(model_dir, engine_dir)
    manifest.check_files(engine_dir)
    return manifest
