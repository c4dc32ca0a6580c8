"""Where a worker computes: the GPU TorchServe assigned when CUDA is there, else the CPU."""

from __future__ import annotations

import os

import torch

from handlers.config import HandlerConfig


def pick_device(gpu_id: int | None) -> torch.device:
    if gpu_id is not None and torch.cuda.is_available():
        return torch.device(f"cuda:{gpu_id}")
    return torch.device("cpu")


def configure_threads(cfg: HandlerConfig) -> int:
    """Apply the configured intra-op thread count (workers otherwise fight over cores). On the
    llamacpp engine the threads are llama.cpp's, and torch (token choice only) gets one, so that
    its OpenMP threads do not spin on the cores llama.cpp computes on."""
    if cfg.engine == "llamacpp":
        torch.set_num_threads(1)
        return cfg.threads or os.cpu_count() or 1
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return torch.get_num_threads()
