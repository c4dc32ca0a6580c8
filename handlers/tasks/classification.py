"""Text classification: AutoModelForSequenceClassification -> [{label, score}] per input."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from handlers.config import HandlerConfig
from handlers.payload import InputError, Payload
from handlers.results import Label, Labels
from handlers.tasks import TaskName
from handlers.tasks.base import EncoderTask, Item, Tokens


@dataclass(frozen=True)
class ClassificationParams:
    top_k: int | None = 1  # null: every label
    truncate: bool | None = None


class ClassificationTask(EncoderTask[ClassificationParams]):
    name = TaskName.CLASSIFICATION
    Params = ClassificationParams

    def load(self, model_dir: str, cfg: HandlerConfig, device: torch.device) -> None:
        super().load(model_dir, cfg, device)
        config = self.engine.config
        # The same choice as transformers' text-classification pipeline.
        if config.problem_type == "regression":
            self.activation = lambda logits: logits
        elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
            self.activation = torch.sigmoid
        else:
            self.activation = lambda logits: torch.softmax(logits, dim=-1)

    def parse(self, payload: Payload) -> Item[ClassificationParams]:
        item = super().parse(payload)
        if item.params.top_k is not None and item.params.top_k < 1:
            raise InputError(
                f"parameters.top_k must be >= 1 or null (every label), got {item.params.top_k}",
                reason="invalid_parameter",
            )
        return item

    def collate(self, items: Sequence[Item[ClassificationParams]]) -> Tokens | None:
        return self.tokens(items)

    def forward(self, batch: Tokens) -> list:
        logits = torch.stack(self.per_row(batch, self.engine))
        return self.activation(logits.float()).cpu().tolist()

    def results(self, item: Item[ClassificationParams], outputs: list) -> list[Labels]:
        top_k = item.params.top_k
        return [
            Labels(
                sorted(
                    (Label(label, score) for label, score in zip(self.labels, scores)), key=lambda label: -label.score
                )[:top_k]
            )
            for scores in outputs
        ]
