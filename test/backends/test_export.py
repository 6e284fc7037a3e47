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


class _GroupNormOfNearConstant(torch.nn.Module):
    """A GroupNorm the way the exported Cosmos computes it (stabilized), over a whole 64x64 map."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.norm = torch.nn.GroupNorm(groups, 32, eps=1e-6)
        torch.nn.init.uniform_(self.norm.weight, 0.5, 1.5)
        torch.nn.init.uniform_(self.norm.bias, -0.5, 0.5)
        graphs.stabilize_group_norms(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x), x.mean(dim=(1, 3))


NEAR_CONSTANT_ATOL = 1e-4
"""Without the two-pass GroupNorm and the corrected mean ONNX Runtime is ~5e-2 (GroupNorm) and
4.5e-4 (mean) off here, or NaN (a negative variance)."""


@pytest.mark.parametrize("groups", [4, 32])
def test_reductions_of_near_constant_maps_stay_exact(tmp_path: Path, groups: int) -> None:
    """An all-black (missing) camera gives near-constant Cosmos feature maps: their statistics must not cancel.

    Groups of several channels (the released Cosmos) and of one channel each (the small models) export differently.
    """
    from internvla_ros.backends.manifest import TensorSpec

    module = _GroupNormOfNearConstant(groups)
    inputs = [TensorSpec("x", (1, 32, 64, 64), "float32")]
    outputs = [TensorSpec("y", (1, 32, 64, 64), "float32"), TensorSpec("m", (1, 64), "float32")]
    path = tmp_path / "norm.onnx"
    export._export_one(module, inputs, outputs, path, export.OPSET)
    session = load_graph(path, ["CPUExecutionProvider"], 1)
    generator = torch.Generator().manual_seed(0)
    for level, noise in ((0.7, 1e-5), (3.0, 1e-4), (-1.0, 0.0)):
        x = level + noise * torch.randn(1, 32, 64, 64, generator=generator)
        normed, mean = session.run(None, {"x": x.numpy()})
        weight, bias = module.norm.weight.detach().double(), module.norm.bias.detach().double()
        exact = torch.nn.functional.group_norm(x.double(), groups, weight, bias, eps=1e-6)
        assert np.isfinite(normed).all()
        assert np.abs(normed - exact.numpy()).max() <= NEAR_CONSTANT_ATOL
        assert np.abs(mean - x.double().mean(dim=(1, 3)).numpy()).max() <= 1e-6


MAX_COSMOS_TRANSPOSES = 4
"""The attention block's token layout needs 3; a traced channels-last encoder had 22."""


def test_cosmos_encode_exports_plain_nchw(engine_dir: Path, model_dir: Path) -> None:
    """The torch encoder runs channels-last; its export must not carry that layout as transposes.

    ONNX Runtime runs a transpose around every norm and 1x1 conv as a copy (it made the graph 2.5x
    slower than torch); the NCHW trace lets it choose the convolution layout itself.
    """
    import onnx

    graph = onnx.load(str(engine_dir / f"{graphs.COSMOS_ENCODE}.onnx"), load_external_data=False).graph
    transposes = sum(node.op_type == "Transpose" for node in graph.node)
    assert sum(node.op_type == "Conv" for node in graph.node) > 0
    assert transposes <= MAX_COSMOS_TRANSPOSES, f"{transposes} Transpose nodes in the Cosmos encoder graph"
    # Each GroupNorm is one InstanceNormalization (not a dozen elementwise ops and reductions).
    encoder = load_checkpoint(model_dir).model.model.cosmos._enc_model
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in encoder.modules())
    assert sum(node.op_type == "InstanceNormalization" for node in graph.node) == norms
    assert not any(node.op_type == "ReduceMean" for node in graph.node)


def test_step_graphs_compute_rope_without_scatters(engine_dir: Path) -> None:
    """M-RoPE gathers each column's axis; the traced in-place recomposition was 8 scatters a call."""
    import onnx

    for name in (graphs.PREFIX, graphs.GENERATION, graphs.ACTION_STEP):
        graph = onnx.load(str(engine_dir / f"{name}.onnx"), load_external_data=False).graph
        scatters = [node.op_type for node in graph.node if node.op_type.startswith("Scatter")]
        assert not scatters, f"{name}: {scatters}"
