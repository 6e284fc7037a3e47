"""Training samples from a dataset, built exactly as the node builds its model inputs.

A sample at frame t of an episode: each camera's frames t - h and t (h = the model's
``image_history_interval``, 15), the state normalised with the checkpoint's statistics, the task as the
prompt (all through :class:`~internvla_ros.model.preprocessing.ObservationPreprocessor`, the node's own
preprocessing), the chunk of the next ``chunk_size`` actions (the last one repeated past the episode's
end), as deltas to the state on the delta dims and normalised, and the frames t + h, whose Cosmos latents
are the foresight target. Frame indices outside the episode are clamped to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch

from internvla_ros.learning.dataset_reader import RobotDataset, frame_cache
from internvla_ros.learning.dataset_stats import action_chunks, model_actions
from internvla_ros.model.config import InternVLAConfig
from internvla_ros.model.inputs import ModelInputs
from internvla_ros.model.normalization import NormalizationStats
from internvla_ros.model.preprocessing import ObservationPreprocessor, PreprocessorConfig, PromptTokenizer


@dataclass(frozen=True)
class TrainingBatch:
    inputs: ModelInputs
    actions: torch.Tensor  # (B, chunk, dim) normalised, not padded
    future_frames: torch.Tensor | None  # (B, n_views, 3, H, W) in [0, 1], the frames t + h (None: latents cached)
    frame_indices: np.ndarray | None = None  # (B, 3) dataset frames t - h, t, t + h (clamped to the episode)

    @property
    def action_dim(self) -> int:
        return int(self.actions.shape[-1])


def stack_inputs(items: Sequence[ModelInputs]) -> ModelInputs:
    """Batches of one -> one batch (every field concatenated along the batch axis)."""
    values = {}
    for f in fields(ModelInputs):
        tensors = [getattr(item, f.name) for item in items]
        values[f.name] = None if tensors[0] is None else torch.cat(tensors)
    return ModelInputs(**values)


class TrainingSamples:
    def __init__(self, dataset: RobotDataset, config: InternVLAConfig, stats: NormalizationStats,
                 tokenizer: PromptTokenizer, cache_dir: Path, stride: int = 1) -> None:
        if stats.state_dim != dataset.schema.dim or stats.action_dim != dataset.schema.dim:
            raise ValueError(f"statistics of {stats.state_dim}/{stats.action_dim} dims for a "
                             f"{dataset.schema.dim}-joint dataset")
        self.dataset = dataset
        self.config = config
        self.stats = stats
        preprocessor_config = PreprocessorConfig.from_model_config(config)
        self.preprocessor = ObservationPreprocessor(preprocessor_config, tokenizer, stats)
        if stride < 1 or config.image_history_interval % stride:
            raise ValueError(f"sample stride {stride} must divide the frame history interval "
                             f"({config.image_history_interval}), so that the t - h and t + h frames are samples' "
                             "frames too")
        # The frames that are samples: every stride-th of each episode (their latents are then the only ones needed).
        self.frame_index = np.concatenate([np.arange(e.start, e.stop, stride) for e in dataset.episodes])
        # The frames a sample reads: its own, t - h and t + h (samples' frames too) and its episode's last (t + h
        # beyond the end reads that).
        needed = np.zeros(len(dataset), dtype=bool)
        needed[self.frame_index] = True
        needed[[e.stop - 1 for e in dataset.episodes]] = True
        size = (config.processor.resize_height, config.processor.resize_width)
        self.frames = {camera: frame_cache(dataset, camera, cache_dir, size, needed if stride > 1 else None)
                       for camera in dataset.schema.cameras}
        self.frames_tag = {camera: json.loads((cache_dir / f"frames_{camera}.json").read_text())
                           for camera in dataset.schema.cameras}
        self.history = config.image_history_interval
        self.mask = np.asarray(dataset.schema.absolute_mask, dtype=bool)
        self._bounds = [(e.start, e.stop, e.task) for e in dataset.episodes]

    def __len__(self) -> int:
        """Samples (frames at a multiple of the stride from their episode's start)."""
        return len(self.frame_index)

    def _actions(self, index: int, start: int, stop: int) -> np.ndarray:
        actions = self.dataset.actions[start:stop]
        chunk = action_chunks(actions[index - start:], self.config.chunk_size)[:1]
        delta = model_actions(chunk, self.dataset.states[index][None], self.mask)[0]
        eps = np.float32(self.stats.eps)
        return ((delta - self.stats.action_mean) / (self.stats.action_std + eps)).astype(np.float32)

    def _slots(self, index: int) -> dict[int, np.ndarray]:
        return {slot: np.asarray(self.frames[camera][index]) for camera, slot in self.dataset.schema.cameras.items()}

    def prompt_token_ids(self) -> set[int]:
        """Every token id the model reads for this dataset's prompts (camera placeholders and padding included)."""
        first = {}
        for start, _, task in self._bounds:
            first.setdefault(task, start)
        ids = self.batch(list(first.values()), cosmos_frames=False).inputs.input_ids
        return set(ids.unique().tolist())

    def task(self, index: int) -> str:
        return self._bounds[int(self.dataset.episode_of[index])][2]

    def batch(self, indices: Sequence[int], instruction: str | None = None,
              cosmos_frames: bool = True) -> TrainingBatch:
        """The samples at ``indices``; ``instruction`` replaces their episodes' task (a counterfactual check).

        Without ``cosmos_frames`` only the ViT's time-t frames are read, and ``inputs.frames`` and
        ``future_frames`` are None: a trainer with cached latents needs only the frames' indices."""
        items, actions, futures, frame_indices = [], [], [], []
        cfg = self.config
        for index in indices:
            start, stop, task = self._bounds[int(self.dataset.episode_of[index])]
            task = task if instruction is None else instruction
            past, future = max(index - self.history, start), min(index + self.history, stop - 1)
            frame_indices.append((past, index, future))
            actions.append(self._actions(index, start, stop))
            state = self.dataset.states[index]
            if not cosmos_frames:
                items.append(replace(self.preprocessor(self._slots(index), state, task), frames=None))
                continue
            items.append(self.preprocessor(self._slots(index), state, task, self._slots(past)))
            frames = torch.zeros(cfg.n_views, 3, *self.frames[next(iter(self.frames))].shape[1:3])
            for slot, rgb in self._slots(future).items():
                frames[slot] = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
            futures.append(frames)
        return TrainingBatch(stack_inputs(items), torch.from_numpy(np.stack(actions)),
                             torch.stack(futures) if cosmos_frames else None,
                             np.asarray(frame_indices, dtype=np.int64))
