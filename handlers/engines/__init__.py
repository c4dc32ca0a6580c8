"""Engines: what runs an encoder's forward pass. A task hands its engine a padded batch
(input ids and attention mask) and gets the model's output back, the last hidden states
(embeddings) or the logits (classifiers); it never calls the model itself. One module per
backend, picked by the handler key `engine`: `torch` (transformers' model in torch) and
`ort` (ONNX Runtime, on the graph exported at preparation)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from handlers.config import HandlerConfig


class Engine(Protocol):
    config: Any  # the model's transformers config (labels, sizes, position limit)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The model's `output` for the batch: [rows, tokens, hidden] or [rows, (tokens,) labels]."""


def load_engine(auto_class, output: str, model_dir: str, cfg: HandlerConfig, device: torch.device) -> Engine:
    """The engine for a model directory: `auto_class` is the transformers class its task loads,
    `output` the field of that model's output the task reads."""
    if cfg.engine == "onnxruntime":
        from handlers.engines.ort import OrtEngine

        return OrtEngine(model_dir, cfg, device)
    from handlers.engines.torch import TorchEngine

    return TorchEngine(auto_class, output, model_dir, cfg, device)
