"""Where a policy's action tokens look: their attention, per layer and head, split by the kind of key.

A language-conditioned policy can only follow its instruction through attention on the prompt's
tokens (directly, or through the camera and foresight tokens that read them). The report gives, for
the action tokens at the first and the last denoising step, the share of each layer's attention that
goes to the camera tokens, the prompt, the foresight (generation) tokens, the state token and the
action tokens, beside the share an even spread over the valid keys would give: a prompt share far
below its even share is a policy that has learned to look away from its instruction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from internvla_ros.model.attention import (
    ACTION_BLOCK,
    GENERATION_BLOCK,
    PREFIX_BLOCK,
    STATE_BLOCK,
    AttentionWeights,
)

KEY_GROUPS = ("camera", "prompt", "foresight", "state", "action")


def key_groups(record: AttentionWeights, prompt_tokens: int) -> dict[str, torch.Tensor]:
    """Boolean ``(Lk,)`` masks of each key group; the prompt is the prefix's last ``prompt_tokens`` keys."""
    blocks = record.key_blocks
    prefix = blocks == PREFIX_BLOCK
    prompt = prefix & (torch.arange(len(blocks), device=blocks.device) >= int(prefix.sum()) - prompt_tokens)
    return {"camera": prefix & ~prompt, "prompt": prompt, "foresight": blocks == GENERATION_BLOCK,
            "state": blocks == STATE_BLOCK, "action": blocks == ACTION_BLOCK}


class ActionAttention:
    """Accumulates the action tokens' attention over batches; :meth:`report` gives the means."""

    def __init__(self, prompt_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self._sums: dict[tuple[str, int], np.ndarray] = {}  # (step, layer) -> (groups + even groups, heads)
        self._counts: dict[tuple[str, int], int] = {}

    def add(self, records: Sequence[AttentionWeights]) -> None:
        """The records of one pipeline run; the action passes are those whose queries are state and actions."""
        passes = [r for r in records if bool((r.query_blocks >= STATE_BLOCK).all())]
        if not passes:
            raise ValueError("no action pass among the recorded attention: record around a pipeline run")
        layers = max(r.layer for r in passes) + 1
        steps = {"first": passes[:layers], "last": passes[-layers:]}
        for step, chosen in steps.items():
            for record in chosen:
                key = (step, record.layer)
                self._sums[key] = self._sums.get(key, 0) + self._shares(record) * len(record.weights)
                self._counts[key] = self._counts.get(key, 0) + len(record.weights)

    def _shares(self, record: AttentionWeights) -> np.ndarray:
        rows = record.query_blocks == ACTION_BLOCK
        weights = record.weights[:, :, rows].float()  # (B, heads, actions, Lk)
        valid = record.key_valid.float()  # (B, Lk)
        shares, even = [], []
        for mask in key_groups(record, self.prompt_tokens).values():
            shares.append(weights[..., mask].sum(-1).mean(dim=(0, 2)))
            spread = (valid[:, mask].sum(-1) / valid.sum(-1).clamp(min=1)).mean()
            even.append(spread.expand(weights.shape[1]))
        return torch.stack(shares + even).cpu().numpy()

    def report(self) -> dict[str, dict[str, dict[str, list[float]]]]:
        """``{step: {layer: {group: per-head share, "even_" + group: even share}}}``."""
        out: dict[str, dict[str, dict[str, list[float]]]] = {}
        names = [*KEY_GROUPS, *(f"even_{g}" for g in KEY_GROUPS)]
        for (step, layer), total in sorted(self._sums.items()):
            mean = total / self._counts[(step, layer)]
            out.setdefault(step, {})[str(layer + 1)] = {
                name: [round(float(v), 4) for v in row] for name, row in zip(names, mean, strict=True)}
        return out


def format_attention(report: dict[str, dict[str, dict[str, list[float]]]]) -> str:
    """One line per denoising step and layer: each group's share (mean over heads) and its even share."""
    lines = ["attention of the action tokens, mean over heads (an even spread over the valid keys in brackets):"]
    for step, layers in report.items():
        for layer, groups in layers.items():
            cells = "  ".join(f"{g} {np.mean(groups[g]):.3f} [{np.mean(groups['even_' + g]):.3f}]" for g in KEY_GROUPS)
            lines.append(f"  {step} step, layer {layer}: {cells}")
    return "\n".join(lines)
