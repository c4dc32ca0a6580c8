"""The ONNX Runtime engine: the graph transerve.build.prepare exported from the torch model and
proved against it, run by an InferenceSession. A worker on a GPU uses ONNX Runtime's CUDA
provider when the installed onnxruntime has one (the onnxruntime-gpu package), else runs the
graph on the CPU and says so. The model directory holds no torch weights, only the graph."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from handlers.config import HandlerConfig

logger = logging.getLogger(__name__)

# The exported graph in a prepared model directory (its weights beside it in GRAPH + ".data").
GRAPH = "model.onnx"
INPUTS = ("input_ids", "attention_mask")


class OrtEngine:
    def __init__(self, model_dir: str, cfg: HandlerConfig, device: torch.device):
        import onnxruntime
        from transformers import AutoConfig

        path = Path(model_dir) / GRAPH
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no ONNX graph; engine: onnxruntime archives carry the one transerve prepared"
            )
        options = onnxruntime.SessionOptions()
        # Workers x threads is the machine's cores, as with torch: one pool per worker, no
        # second pool between operators, and no spinning that would take a core from the other.
        options.intra_op_num_threads = cfg.threads or 0
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers: list = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
            else:
                logger.warning(
                    "transerve: this worker has %s, but the installed onnxruntime has no CUDA provider "
                    "(install onnxruntime-gpu): the graph runs on the CPU",
                    device,
                )
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"
        self.config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        self.device = device

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(INPUTS, (input_ids.cpu().numpy(), attention_mask.cpu().numpy())))
        [output] = self.session.run(None, feeds)
        return torch.from_numpy(output).to(self.device)
