"""engine: llamacpp: generation from a GGUF file as it ships (4-bit weights read as they are, not
dequantized), run by llama.cpp through llama-cpp-python's low-level API.

One llama.cpp context per worker with a KV stream of its own for each of up to `rows` sequences
(not unified: a sequence attends to its own cells only, so its logits do not depend on the
other sequences, and a seeded row samples the same text alone or beside others). Each forward
is one `llama_decode` of a batch holding the last token of every running row plus the next
prefill chunk (several batches when a static batch's prompts do not fit in one).

llama.cpp computes such a batch in one pass over the weights only for a run of consecutive
sequence ids in increasing order (llama_batch_allocr::split_equal); every gap starts another
pass, and decoding is bound by reading the weights. So the rows held always have the sequence
ids 0..n-1, in batch order: when a row leaves, the row with the highest id moves into its place
(llama_memory_seq_cp copies that KV stream, at the next decode). The logits
come back to transerve's own token choice (handlers/generation/sampling.py), so seeds, sampling
parameters and stop strings behave as on the torch engine; the tokenizer and chat template are
the Hugging Face ones saved beside the GGUF at preparation (transerve.build.prepare), the same the
torch engine uses. A row's sequence is cleared and handed to the next row when it leaves.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

_LEVELS = {
    4: logging.ERROR,
    3: logging.WARNING,
}  # ggml_log_level: 4 error, 3 warn (info, debug and continuations dropped)
_log_callback = None  # kept alive: llama.cpp calls it from C


def _route_logs(llama_cpp) -> None:
    global _log_callback
    if _log_callback is not None:
        return

    @llama_cpp.llama_log_callback
    def callback(level, text, _user_data):
        if level in _LEVELS and text:
            logger.log(_LEVELS[level], "llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

    _log_callback = callback
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


class LlamaCppError(RuntimeError):
    """llama.cpp refused a file, a context or a batch; the message says which."""


def find_gguf(model_dir: str | Path) -> Path:
    found = sorted(Path(model_dir).glob("*.gguf"))
    if len(found) != 1:
        raise LlamaCppError(f"engine llamacpp needs exactly one .gguf file in {model_dir}, found {len(found)}")
    return found[0]


def load_model(L, path: str | Path):
    """The GGUF at `path` loaded on the CPU, as the engine and every in-process reference load it
    (`L` is the llama_cpp module; a null pointer when llama.cpp cannot load it)."""
    params = L.llama_model_default_params()
    params.n_gpu_layers = 0
    # No repacked weight buffers: on a CPU with AMX, llama.cpp 0.3.36 repacks q4_1 weights
    # for its AMX backend and then crashes the process in the first decode (seen on a Xeon
    # with amx_int8: SIGSEGV in llama_decode). The repack for AVX2/AVX-512 covers q4_0 and
    # k-quants only, so the q4_1 default loses nothing by it.
    params.use_extra_bufts = False
    return L.llama_model_load_from_file(str(path).encode(), params)


class LlamaCppLM:
    """The KV state and forward pass of handlers.generation.decoder's Engine, on llama.cpp."""

    name = "llama.cpp"

    def __init__(self, path: str | Path, rows: int, positions: int, batch_tokens: int, threads: int):
        import llama_cpp

        self.L = L = llama_cpp
        _route_logs(L)
        L.llama_backend_init()
        self.model = load_model(L, path)
        if not self.model:
            raise LlamaCppError(f"llama.cpp could not load {path} (see the worker log for its reason)")
        self.vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        cp = L.llama_context_default_params()
        cp.n_seq_max = rows
        cp.n_ctx = rows * positions  # each sequence gets n_ctx / n_seq_max cells (rounded up to 256)
        cp.n_batch = cp.n_ubatch = batch_tokens
        cp.n_threads = cp.n_threads_batch = threads
        cp.kv_unified = False
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise LlamaCppError(f"llama.cpp could not make a context of {rows} sequences x {positions} positions")
        self.memory = L.llama_get_memory(self.ctx)
        self.capacity, self.batch_tokens, self.threads = rows, batch_tokens, threads
        self.batch = L.llama_batch_init(batch_tokens, 0, 1)
        self.logits = np.empty((rows, self.vocab), dtype=np.float32)  # the rows' next-token logits
        self.free = list(range(rows - 1, -1, -1))  # sequence ids not in use (pop gives the lowest)
        self.seq: dict = {}  # row -> its sequence id
        self.fed: dict = {}  # prefilling row -> prompt tokens already in its KV stream
        self.rows: list = []
        self.prefilling: list = []
        self.chunk: int | None = None

    def admit(self, rows: list, chunk: int | None) -> None:
        if len(rows) > len(self.free):
            raise LlamaCppError(
                f"{len(rows)} rows to admit, {len(self.free)} sequences free (max_running {self.capacity})"
            )
        for row in rows:
            self.seq[row], self.fed[row] = self.free.pop(), 0
        self.prefilling += rows
        self.chunk = chunk

    def forward(self) -> torch.Tensor | None:
        # (row, token, position, wants logits), in sequence order: a running row's last token, a
        # prefilling row's next chunk (logits after its prompt's last token).
        entries, joined = [], []
        running = set(self.rows)
        for row in sorted(self.seq, key=self.seq.__getitem__):
            if row in running:
                entries.append((row, row.tokens[-1], len(row.prompt) + len(row.tokens) - 1, True))
                continue
            start = self.fed[row]
            stop = len(row.prompt) if self.chunk is None else min(len(row.prompt), start + self.chunk)
            entries += [(row, row.prompt[p], p, p == len(row.prompt) - 1) for p in range(start, stop)]
            self.fed[row] = stop
            if stop == len(row.prompt):
                joined.append(row)
        outputs: list = []
        for begin in range(0, len(entries), self.batch_tokens):
            self.decode(entries[begin : begin + self.batch_tokens], outputs)
        for row in joined:
            self.prefilling.remove(row)
            del self.fed[row]
        self.rows = outputs  # the logits' order
        return torch.from_numpy(self.logits[: len(outputs)]) if outputs else None

    def decode(self, entries: list, outputs: list) -> None:
        """One llama_decode of `entries`; the rows that get logits appended to `outputs`, their logits
        copied into place."""
        batch = self.batch
        for i, (row, token, position, wants) in enumerate(entries):
            batch.token[i], batch.pos[i] = token, position
            batch.n_seq_id[i], batch.seq_id[i][0] = 1, self.seq[row]
            batch.logits[i] = wants
        batch.n_tokens = len(entries)
        status = self.L.llama_decode(self.ctx, batch)
        if status != 0:
            raise LlamaCppError(f"llama_decode failed ({status}) on a batch of {len(entries)} tokens")
        wanted = [entry[0] for entry in entries if entry[3]]
        if wanted:
            # in batch order (llama.h: "stored contiguously in the order they have appeared in the batch")
            got = np.ctypeslib.as_array(self.L.llama_get_logits(self.ctx), shape=(len(wanted), self.vocab))
            self.logits[len(outputs) : len(outputs) + len(wanted)] = got
            outputs += wanted

    def evict(self, rows: list) -> None:
        gone = [row for row in rows if row in self.seq]
        if not gone:
            return
        holes = []
        for row in gone:
            seq = self.seq.pop(row)
            self.fed.pop(row, None)
            self.L.llama_memory_seq_rm(self.memory, seq, -1, -1)
            holes.append(seq)
        gone_set = set(gone)
        self.rows = [r for r in self.rows if r not in gone_set]
        self.prefilling = [r for r in self.prefilling if r not in gone_set]
        # Keep the ids 0..n-1: the highest ones move into the holes below them.
        by_seq = {seq: row for row, seq in self.seq.items()}
        for hole in sorted(holes):
            top = max(by_seq, default=-1)
            if top < hole:
                break
            row = by_seq.pop(top)
            self.L.llama_memory_seq_cp(self.memory, top, hole, -1, -1)
            self.L.llama_memory_seq_rm(self.memory, top, -1, -1)
            self.seq[row], by_seq[hole] = hole, row
        self.free = list(range(self.capacity - 1, len(self.seq) - 1, -1))

    def close(self) -> None:
        L = self.L
        if self.ctx:
            L.llama_batch_free(self.batch)
            L.llama_free(self.ctx)
            L.llama_model_free(self.model)
            self.ctx = self.model = None
