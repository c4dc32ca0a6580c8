"""Sentence embeddings: AutoModel, pooling over the attention mask, optional L2 norm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from handlers.results import Embedding
from handlers.tasks import TaskName
from handlers.tasks.base import EncoderTask, Item, Tokens


@dataclass(frozen=True)
class EmbeddingParams:
    normalize: bool | None = None  # None: the model's configured default
    truncate: bool | None = None


@dataclass
class EmbeddingBatch:
    tokens: Tokens
    normalize: torch.Tensor  # one flag per row


class EmbeddingTask(EncoderTask[EmbeddingParams]):
    name = TaskName.EMBEDDING
    Params = EmbeddingParams

    def collate(self, items: Sequence[Item[EmbeddingParams]]) -> EmbeddingBatch | None:
        tokens = self.tokens(items)
        if tokens is None:
            return None
        flags = [
            self.cfg.normalize if item.params.normalize is None else item.params.normalize
            for item in items
            if item.error is None
            for _ in item.payload.inputs
        ]
        return EmbeddingBatch(tokens, torch.tensor(flags, device=self.device))

    def forward(self, batch: EmbeddingBatch) -> list:
        pooled = torch.stack(self.per_row(batch.tokens, self.pool)).float()
        pooled = torch.where(batch.normalize.unsqueeze(-1), F.normalize(pooled, dim=-1), pooled)
        # float32 numpy rows: the protocols write them as JSON (or base64) without a list of floats
        return list(zip(pooled.cpu().numpy(), batch.tokens.lengths))

    def pool(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.engine(input_ids, mask)
        if self.cfg.pooling == "cls":
            return hidden[:, 0]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)

    def results(self, item: Item[EmbeddingParams], outputs: list) -> list[Embedding]:
        return [Embedding(vector, tokens) for vector, tokens in outputs]

    @property
    def dimensions(self) -> int:
        return self.engine.config.hidden_size
