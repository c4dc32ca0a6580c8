"""Where a worker computes: the GPU TorchServe assigned when CUDA is there, else the CPU."""

from __future__ import annotations

import torch

from handlers.config import HandlerConfig


def pick_device(gpu_id: int | None) -> torch.device:
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def configure_threads(cfg: HandlerConfig) -> int:
    """Apply the configured intra-op thread count (workers otherwise fight over cores)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return torch.get_num_threads()
