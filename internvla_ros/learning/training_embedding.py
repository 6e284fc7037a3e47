"""Training the token embedding's rows that the prompts use, not the whole vocabulary.

The und expert's embedding is 151,936 rows (the tied ``lm_head``), and a dataset's prompts use a few dozen of
them. Trained whole, every step built a dense gradient of the full table and AdamW updated all of it: on a
2-core CPU that was about a third of a training step. Here the used rows are a parameter of their own, put in
place of the table's rows by a forward hook on the embedding, and written back into the table before each
save, so the model, its checkpoint layout and everything that loads it stay as they are. Rows no prompt uses
are left exactly as loaded (the whole-table training decayed them by AdamW's weight decay).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PromptRows:
    """The rows of ``embedding`` for ``token_ids`` as a trainable parameter while this object is attached."""

    def __init__(self, embedding: nn.Embedding, token_ids: Iterable[int]) -> None:
        ids = sorted({int(i) for i in token_ids})
        if not ids:
            raise ValueError("no token ids to train: the dataset's prompts tokenized to nothing")
        table = embedding.weight
        if ids[0] < 0 or ids[-1] >= len(table):
            raise ValueError(f"token ids {ids[0]}..{ids[-1]} outside the embedding's {len(table)} rows")
        table.requires_grad_(False)
        self.embedding = embedding
        self.ids = torch.tensor(ids, dtype=torch.long, device=table.device)
        self.rows = nn.Parameter(table.detach()[self.ids].clone())
        self._local = torch.full((len(table),), -1, dtype=torch.long, device=table.device)
        self._local[self.ids] = torch.arange(len(ids), device=table.device)
        self._hook = embedding.register_forward_hook(self._replace)

    def _replace(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        local = self._local[inputs[0]]
        hit = (local >= 0).unsqueeze(-1)
        return torch.where(hit, F.embedding(local.clamp(min=0), self.rows).to(output.dtype), output)

    def write_back(self) -> None:
        """Copy the trained rows into the table (before the model is saved)."""
        with torch.no_grad():
            self.embedding.weight[self.ids] = self.rows.to(self.embedding.weight.dtype)

    def detach(self) -> None:
        """Write back and remove the hook: the embedding is the plain table again."""
        self.write_back()
        self._hook.remove()
