"""Cosmos latents of the dataset's frames, encoded once and kept beside the frame cache.

The Cosmos tokenizer is frozen during fine-tuning, so the latent of a camera frame never changes: a
sample at frame t needs the latents of frames t - 15, t (the foresight block's input) and t + 15 (its
target), and every frame serves as all three for some sample. Encoding them on every step was the
largest single cost of a CPU training step. Each frame is encoded the first time a batch needs it and
stored in ``latents_<camera>.npy`` (float32, memory-mapped, with ``latents_<camera>.done.npy`` marking
the frames written); the cache is reused while the frames and the Cosmos weights are the same
(``latents.json`` records the frame caches' tags and a digest of the weights).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

Encoder = Callable[[torch.Tensor], torch.Tensor]  # (n, 3, H, W) in [0, 1] -> (n, C, h, w) float32


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's tensors (names, shapes, bytes): which weights made a cached latent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    """Per camera slot: the latent of every frame, encoded from ``frames`` (uint8 ``(N, H, W, 3)``) on first use."""

    def __init__(self, cache_dir: Path, frames: Mapping[str, np.ndarray], slots: Mapping[str, int],
                 shape: tuple[int, int, int], tag: dict) -> None:
        self.frames = dict(frames)
        self.slot_camera = {slot: camera for camera, slot in slots.items()}
        self.shape = shape
        cache_dir.mkdir(parents=True, exist_ok=True)
        tag_path = cache_dir / "latents.json"
        tag = {**tag, "shape": list(shape)}
        valid = tag_path.is_file() and json.loads(tag_path.read_text()) == tag
        if not valid:
            tag_path.unlink(missing_ok=True)
        self.latents: dict[str, np.memmap] = {}
        self.done: dict[str, np.memmap] = {}
        for camera, images in self.frames.items():
            count = len(images)
            path, done = cache_dir / f"latents_{camera}.npy", cache_dir / f"latents_{camera}.done.npy"
            if valid and path.is_file() and done.is_file():
                self.latents[camera] = np.load(path, mmap_mode="r+")
                self.done[camera] = np.load(done, mmap_mode="r+")
            else:
                self.latents[camera] = np.lib.format.open_memmap(path, "w+", np.float32, (count, *shape))
                self.done[camera] = np.lib.format.open_memmap(done, "w+", np.bool_, (count,))
        if not valid:
            tag_path.write_text(json.dumps(tag))

    def encoded(self) -> int:
        """Frames encoded so far, over all cameras."""
        return int(sum(done.sum() for done in self.done.values()))

    def _fill(self, camera: str, indices: np.ndarray, encode: Encoder) -> None:
        missing = np.unique(indices[~self.done[camera][indices]])
        if not len(missing):
            return
        images = torch.from_numpy(np.ascontiguousarray(self.frames[camera][missing])).permute(0, 3, 1, 2).float()
        with torch.no_grad():
            latents = encode(images / 255.0).float().cpu().numpy()
        self.latents[camera][missing] = latents
        self.latents[camera].flush()
        self.done[camera][missing] = True  # only after the latents are on disk
        self.done[camera].flush()

    def lookup(self, indices: np.ndarray, views: torch.Tensor, encode: Encoder) -> torch.Tensor:
        """Latents ``(B, n_views, K, C, h, w)`` of frames ``indices`` ``(B, K)`` of every present camera slot
        (``views`` ``(B, n_views)``); absent slots stay zero."""
        batch, k = indices.shape
        out = torch.zeros(batch, views.shape[1], k, *self.shape)
        for slot, camera in self.slot_camera.items():
            present = views[:, slot].cpu().numpy().astype(bool)
            if not present.any():
                continue
            wanted = indices[present]
            self._fill(camera, wanted.reshape(-1), encode)
            out[torch.from_numpy(present), slot] = torch.from_numpy(np.asarray(self.latents[camera][wanted]))
        return out
