"""CUDA graphs for the torch pipeline's tensor stages, for ``internvla bench gpu``.

A graphed stage is captured once per input layout (shapes, dtypes, devices and the non-tensor values of its
arguments) after a warm-up on a side stream; each later call copies its inputs into the captured ones and
replays. Arguments and results may nest tensors in tuples, lists, dicts and dataclasses (TokenBlock,
BlockCache). The results are the graph's own output tensors, overwritten by the next replay of that stage:
the pipeline consumes each stage's output before it calls the stage again. A stage that cannot be captured
(it synchronises with the CPU, e.g. ``.item()``) runs eagerly from then on and says why in ``capture_errors``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

# The TorchStages attributes holding the model's pure tensor functions (what --compile wraps too).
GRAPHED_ATTRIBUTES = ("_embed_images", "_encode", "_run_prefix", "_run_generation", "_denoise_step")
WARMUP_CALLS = 2


def flatten(tree: Any) -> tuple[list[torch.Tensor], Any]:
    """The tensors of ``tree`` in a fixed order, and its layout (with every non-tensor value)."""
    leaves: list[torch.Tensor] = []

    def walk(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            leaves.append(node)
            return ("tensor", tuple(node.shape), node.dtype, str(node.device))
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            return ("dataclass", type(node), tuple((f.name, walk(getattr(node, f.name)))
                                                   for f in dataclasses.fields(node)))
        if isinstance(node, tuple | list):
            return (type(node), tuple(walk(item) for item in node))
        if isinstance(node, dict):
            return (dict, tuple((key, walk(value)) for key, value in node.items()))
        return ("value", node)

    return leaves, walk(tree)


def unflatten(layout: Any, leaves: list[torch.Tensor]) -> Any:
    """The tree of ``layout`` with its tensors taken in order from ``leaves``."""
    source = iter(leaves)

    def build(node: Any) -> Any:
        kind = node[0]
        if kind == "tensor":
            return next(source)
        if kind == "value":
            return node[1]
        if kind == "dataclass":
            return node[1](**{name: build(child) for name, child in node[2]})
        if kind is dict:
            return {key: build(child) for key, child in node[1]}
        items = [build(child) for child in node[1]]
        return items if kind is list else kind(*items) if hasattr(kind, "_fields") else kind(items)

    return build(layout)


class GraphedFunction:
    """``fn`` captured as a CUDA graph per input layout (see the module docstring)."""

    def __init__(self, fn: Callable[..., Any], name: str, capture_errors: dict[str, str]) -> None:
        self._fn = fn
        self._name = name
        self._errors = capture_errors
        self._graphs: dict[Any, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], Any]] = {}

    def __call__(self, *args: Any) -> Any:
        if self._name in self._errors:
            return self._fn(*args)
        leaves, layout = flatten(args)
        key = repr(layout)
        if key not in self._graphs:
            try:
                self._graphs[key] = self._capture(leaves, layout)
            except RuntimeError as err:  # not capturable: eager from now on, and said so
                self._errors[self._name] = f"{type(err).__name__}: {err}".splitlines()[0]
                torch.cuda.synchronize()
                return self._fn(*args)
        graph, static_inputs, static_output = self._graphs[key]
        for static, value in zip(static_inputs, leaves, strict=True):
            if static.data_ptr() != value.data_ptr():
                static.copy_(value)
        graph.replay()
        return static_output

    def _capture(self, leaves: list[torch.Tensor], layout: Any) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor],
                                                                          Any]:
        static_inputs = [leaf.clone() for leaf in leaves]
        static_args = unflatten(layout, static_inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self._fn(*static_args)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_output = self._fn(*static_args)
        return graph, static_inputs, static_output


def graph_stages(stages: Any) -> dict[str, str]:
    """Replaces the tensor functions of a TorchStages with CUDA-graphed ones; returns the dict that collects
    the stages that could not be captured (name -> why)."""
    missing = [name for name in GRAPHED_ATTRIBUTES if not callable(getattr(stages, name, None))]
    if missing:
        msg = (f"{type(stages).__name__} has no {', '.join(missing)}: the CUDA-graph variant wraps the functions "
               "the torch stages compile; update GRAPHED_ATTRIBUTES to the stages' current names")
        raise RuntimeError(msg)
    errors: dict[str, str] = {}
    for name in GRAPHED_ATTRIBUTES:
        setattr(stages, name, GraphedFunction(getattr(stages, name), name.lstrip("_"), errors))
    return errors
