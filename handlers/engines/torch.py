"""The torch engine: transformers' model in torch, in the configured dtype, on the worker's
device, in eval mode (int8 dynamic quantization on CPU when the spec asks for it)."""

from __future__ import annotations

import logging
import warnings

import torch

from handlers.config import HandlerConfig

logger = logging.getLogger(__name__)


class TorchEngine:
    name = "torch"

    def __init__(self, auto_class, output: str, model_dir: str, cfg: HandlerConfig, device: torch.device):
        self.model = load_pretrained(auto_class, model_dir, cfg, device)
        self.config = self.model.config
        self.output = output

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), self.output)


def load_pretrained(auto_class, model_dir: str, cfg: HandlerConfig, device: torch.device):
    """Weights from safetensors (pickle only where the spec allows it), in the configured dtype,
    on the worker's device, in eval mode; the model's own code only where the spec trusts it."""
    model = auto_class.from_pretrained(
        model_dir, dtype=getattr(torch, cfg.dtype), use_safetensors=None if cfg.allow_pickle else True,
        trust_remote_code=cfg.trust_remote_code,
    )
    model = model.to(device).eval()
    if cfg.quantize == "int8":
        if device.type != "cpu":
            logger.warning("transerve: quantize: int8 is for CPU workers; this one runs on %s in %s", device, cfg.dtype)
        else:
            model = quantize_int8(model)
    return model


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantization of every Linear layer, one scale per output channel."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch marks the eager-mode API deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
