"""The torch engine: transformers' model in torch, in the configured dtype, on the worker's
device, in eval mode (int8 dynamic quantization on CPU when the spec asks for it): TorchEngine
runs an encoder's forward pass, TorchLM a causal LM's decode steps (handlers/generation)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

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
        model_dir,
        dtype=getattr(torch, cfg.dtype),
        use_safetensors=None if cfg.allow_pickle else True,
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


class TorchLM:
    """Generation on transformers' causal LM in torch: the running rows share one DynamicCache,
    left-padded, so every row's next token is at the end and its positions count only its own
    tokens (from its own attention mask): a row decodes the same tokens whatever joins or leaves.

    Rows joining are prefilled in a cache of their own (`chunk` columns a step when their prompts
    are wider), then stacked under the running rows'; rows leaving are cut out of the cache, and
    the left columns no row attends to any more are dropped (`trim`)."""

    name = "torch"
    capacity = None  # rows are stacked in one batch; the scheduler bounds how many

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        self.device = model.device
        self.rows: list = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        self.group: Prefill | None = None

    @property
    def prefilling(self) -> list:
        return self.group.rows if self.group is not None else []

    def admit(self, rows: list, chunk: int | None) -> None:
        width = max(len(r.prompt) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        self.group = Prefill(
            list(rows), ids.to(self.device), mask.to(self.device), chunk=width if chunk is None else max(1, chunk)
        )

    def forward(self) -> torch.Tensor | None:
        logits = None
        if self.rows:
            tokens = torch.tensor([r.tokens[-1] for r in self.rows], device=self.device)[:, None]
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
            logits = self.forward_model(tokens, self.mask, self.mask.sum(-1, keepdim=True) - 1, self.cache)
        if self.group is not None:
            joined = self.prefill(self.group)
            if joined is not None:
                logits = joined if logits is None else torch.cat([logits, joined])
        return logits

    def prefill(self, group: Prefill) -> torch.Tensor | None:
        """The group's next chunk; once the whole prompt is in, its rows join the running batch
        and their logits are returned."""
        end = min(group.done + group.chunk, group.ids.shape[1])
        positions = (group.mask.cumsum(-1) - 1).clamp(min=0)[:, group.done : end]
        logits = self.forward_model(group.ids[:, group.done : end], group.mask[:, :end], positions, group.cache)
        group.done = end
        if end < group.ids.shape[1]:
            return None
        self.group = None
        if not self.rows:
            self.rows, self.cache, self.mask = group.rows, group.cache, group.mask
            return logits
        # Both batches left-padded to the longer one, then stacked: padding is masked out,
        # and positions come from each row's own mask.
        width = max(self.mask.shape[1], group.mask.shape[1])
        merge_caches(self.cache, group.cache, width)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(group.mask, width)])
        self.rows = self.rows + group.rows
        return logits

    def evict(self, rows: list) -> None:
        gone = set(map(id, rows))
        if self.group is not None and any(id(r) in gone for r in self.group.rows):
            keep = [i for i, r in enumerate(self.group.rows) if id(r) not in gone]
            if keep:
                self.group.select(keep)
            else:
                self.group = None
        if not any(id(r) in gone for r in self.rows):
            return
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.cache = self.mask = None
            return
        index = torch.tensor(keep, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.trim()

    def trim(self) -> None:
        """Drop the left columns that no running row attends to: padding left behind by longer
        rows that went. Without this a batch that never empties (continuous batching under
        steady load) would keep every position it ever held, in memory and in every step's
        attention. Positions come from each row's own mask, so dropping them changes nothing."""
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        if start == 0:
            return
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]

    def forward_model(self, ids, mask, positions, cache) -> torch.Tensor:
        """The next-token logits of every row (float32)."""
        return (
            self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1, :]
            .float()
        )


@dataclass
class Prefill:
    """Rows joining: their left-padded prompts, prefilled `chunk` columns at a time into a
    cache of their own."""

    rows: list
    ids: torch.Tensor
    mask: torch.Tensor
    chunk: int
    cache: DynamicCache = field(default_factory=DynamicCache)
    done: int = 0  # columns prefilled

    def select(self, keep: list[int]) -> None:
        index = torch.tensor(keep, device=self.ids.device)
        self.rows = [self.rows[i] for i in keep]
        self.ids, self.mask = self.ids[index], self.mask[index]
        self.cache.batch_select_indices(index)


def _pad_left(tensor: torch.Tensor, width: int, dim: int = 1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def merge_caches(running: DynamicCache, new: DynamicCache, width: int) -> None:
    """Stack `new`'s rows under `running`'s, both left-padded to `width` positions (in place).

    transformers 5 has its own continuous batching (generation/continuous_batching: a paged
    cache driven by a background thread with one seed for every request, switching the
    model to paged attention); it would lose the per-row seeds and the parity above, so the
    rows are merged here, in the plain DynamicCache the prefill made.
    """
    for mine, theirs in zip(running.layers, new.layers):
        if type(mine) is not DynamicLayer or type(theirs) is not DynamicLayer:
            raise NotImplementedError(f"merging {type(mine).__name__} cache layers (a sliding window, say)")
        mine.keys = torch.cat([_pad_left(mine.keys, width, -2), _pad_left(theirs.keys, width, -2)])
        mine.values = torch.cat([_pad_left(mine.values, width, -2), _pad_left(theirs.values, width, -2)])
