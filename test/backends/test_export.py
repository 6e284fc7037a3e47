"""Graph export details that the shared export does not exercise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from internvla_ros.backends import export, graphs
from internvla_ros.backends.graphs import Layout
from internvla_ros.backends.onnxruntime_backend import load_graph
from internvla_ros.model.checkpoint import load_checkpoint

FORESIGHT_ATOL = 1e-5
VIT_ATOL = 1e-5


def test_large_graphs_keep_weights_in_a_side_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  model_dir: Path) -> None:
    monkeypatch.setattr(export, "INLINE_LIMIT", 0)
    model = load_checkpoint(model_dir).model
    inputs, outputs = export.graph_io(Layout.of(model.config), torch.float32)[graphs.FORESIGHT]
    path = tmp_path / "foresight.onnx"
    export._export_one(graphs.ForesightGraph(model), inputs, outputs, path, export.OPSET)
    assert (tmp_path / "foresight.onnx.data").stat().st_size > path.stat().st_size
    middle_out = torch.rand(inputs[0].shape)
    (latents,) = load_graph(path, ["CPUExecutionProvider"], 1).run(None, {"middle_out": middle_out.numpy()})
    with torch.no_grad():
        expected = model.foresight_latents(middle_out).numpy()
    assert np.abs(latents - expected).max() <= FORESIGHT_ATOL


def test_batched_vit_equals_the_transformers_vit(model_dir: Path) -> None:
    """The export's ViT batches attention per image; transformers splits it with cu_seqlens."""
    model = load_checkpoint(model_dir).model
    config = model.config
    lay = Layout.of(config)
    grid = torch.tensor([[list(config.vision_grid)] * lay.n_views])
    pixels = torch.rand(1, lay.n_views * lay.patches_per_view, lay.patch_values) * 2 - 1
    with torch.no_grad():
        ours = graphs.VisionGraph(model, lay)(pixels[0])
        expected = model.embed_images(pixels, grid)
    assert (ours - expected).abs().max().item() <= VIT_ATOL
