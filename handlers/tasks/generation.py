"""Text generation: AutoModelForCausalLM, chat templates, sampling, stop strings, streaming.

A TorchServe batch is generated together, not one request after another: its prompts
become rows of one decoder (handlers/generation/decoder.py), decoded a token at a time over
one KV cache, each with its own parameters, seed and stop strings; a finished row leaves
the batch, so the rest run on a smaller batch. Unset parameters take the model's
generation_config, as `generate` does.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoConfig, GenerationConfig

from handlers.config import HandlerConfig, short
from handlers.engines.torch import TorchLM, load_pretrained
from handlers.generation.decoder import Decoder, Row, Stepped
from handlers.payload import InputError, Payload
from handlers.results import Generation
from handlers.tasks import TaskName
from handlers.tasks.base import Item, Task, Usage, load_tokenizer, model_max_length

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int | None = None  # None: the model's default_max_new_tokens
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None  # None: sample when temperature, top_p or top_k is given
    repetition_penalty: float | None = None
    stop: str | list | None = None  # the answer ends before the first of these
    seed: int | None = None
    truncate: bool | None = None  # over max_length: keep the prompt's end (true) or 413
    ignore_eos: bool | None = None  # generate max_new_tokens even past end-of-text (benchmarks)
    timeout: float | None = None  # seconds from arrival; then the answer ends, finish_reason "timeout"

    def check(self):
        if self.temperature is not None and not 0.01 <= self.temperature <= 100:
            yield (
                "temperature",
                f"must be >= 0.01 and <= 100, got {self.temperature} (for greedy decoding send do_sample: false)",
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            yield "top_p", f"must be > 0 and <= 1, got {self.top_p}"
        if self.top_k is not None and self.top_k < 1:
            yield "top_k", f"must be >= 1, got {self.top_k}"
        if self.repetition_penalty is not None and not 0.01 <= self.repetition_penalty <= 10:
            yield "repetition_penalty", f"must be >= 0.01 and <= 10, got {self.repetition_penalty}"
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            yield "seed", f"must be between 0 and 2**63-1, got {self.seed}"
        if self.timeout is not None and not self.timeout > 0:
            yield "timeout", f"must be a number of seconds > 0, got {self.timeout}"
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            yield "max_new_tokens", f"must be >= 1, got {self.max_new_tokens}"
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > MAX_STOP_STRINGS:
            yield "stop", f"at most {MAX_STOP_STRINGS} strings, got {len(stops)}"
        for s in stops:
            if not isinstance(s, str) or not 0 < len(s) <= MAX_STOP_CHARS:
                yield "stop", f"each stop must be a string of 1 to {MAX_STOP_CHARS} characters, got {short(s)}"


@dataclass
class Prompts:
    rows: list[Row]
    started_at: float = 0.0


class GenerationTask(Task[GenerationParams]):
    name = TaskName.GENERATION
    Params = GenerationParams
    chat = True
    streams = True

    def load(self, model_dir: str, cfg: HandlerConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.tokenizer = load_tokenizer(model_dir, cfg)
        if cfg.engine == "llamacpp":  # the GGUF file itself; its config and tokenizer were saved beside it
            config = AutoConfig.from_pretrained(model_dir)
            gen = GenerationConfig.from_pretrained(model_dir)
            self.model = None
        else:
            self.model = load_pretrained(self.auto_class, model_dir, cfg, device)
            config, gen = self.model.config, self.model.generation_config
        self.vocab_size = config.vocab_size
        self.max_length = model_max_length(self.tokenizer, config, cfg.max_length)
        self.max_positions = getattr(config, "max_position_embeddings", None) or self.max_length + cfg.max_new_tokens
        self.defaults = {
            "do_sample": bool(gen.do_sample),
            "temperature": gen.temperature if gen.temperature is not None else 1.0,
            "top_k": gen.top_k if gen.top_k is not None else 50,
            "top_p": gen.top_p if gen.top_p is not None else 1.0,
            "repetition_penalty": gen.repetition_penalty if gen.repetition_penalty is not None else 1.0,
        }
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) - {None}
        self.pad_id = next(i for i in (self.tokenizer.pad_token_id, gen.pad_token_id, *self.eos, 0) if i is not None)
        self.engine = None
        if cfg.engine == "llamacpp":
            from handlers.engines.llamacpp import LlamaCppLM, find_gguf

            # A sequence holds the longest prompt and the longest answer; the batch, a token of
            # every running row and a prefill budget's prompt tokens.
            positions = min(self.max_positions, self.max_length + cfg.max_new_tokens)
            self.engine = LlamaCppLM(
                find_gguf(model_dir),
                rows=cfg.max_running,
                positions=positions,
                batch_tokens=cfg.max_running + cfg.prefill_tokens,
                threads=cfg.threads or os.cpu_count() or 1,
            )
            if self.engine.vocab != self.vocab_size:
                raise ValueError(f"the GGUF file has {self.engine.vocab} tokens, its saved config {self.vocab_size}")

    def parse(self, payload: Payload) -> Item[GenerationParams]:
        item = super().parse(payload)
        params = item.params
        if params.max_new_tokens is not None and params.max_new_tokens > self.cfg.max_new_tokens:
            raise InputError(
                f"parameters.max_new_tokens: {params.max_new_tokens} is above this model's limit "
                f"{self.cfg.max_new_tokens}",
                reason="invalid_parameter",
            )
        if params.timeout is not None and params.timeout > self.cfg.max_timeout:
            raise InputError(
                f"parameters.timeout: {params.timeout} s is above this model's limit "
                f"{self.cfg.max_timeout} s (max_timeout)",
                reason="invalid_parameter",
            )
        if payload.stream and len(payload.inputs) > 1:
            raise InputError(
                "'stream' needs a single prompt; send one string in 'inputs' (or 'messages')", reason="invalid_request"
            )
        if payload.messages is not None:
            item.payload = dataclasses.replace(payload, inputs=[self.render(payload.messages)])
        return item

    def render(self, messages: list[dict]) -> str:
        if not self.tokenizer.chat_template:
            raise InputError("this model has no chat template; send the prompt as 'inputs'", reason="invalid_messages")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template itself refuses (roles out of order, say)
            raise InputError(
                f"'messages' do not fit this model's chat template: {e}", reason="invalid_messages"
            ) from None

    def collate(self, items: Sequence[Item[GenerationParams]]) -> Prompts | None:
        # A rendered chat carries its own special tokens; a raw prompt gets the tokenizer's.
        # So one tokenizer call for the chats and one for the raw prompts, not one per request.
        encoded: dict[int, list[list[int]]] = {}
        for chat in (True, False):
            group = [item for item in items if (item.payload.messages is not None) == chat]
            texts = [text for item in group for text in item.payload.inputs]
            if not texts:
                continue
            ids = iter(
                self.tokenizer(
                    texts,
                    add_special_tokens=not chat,
                    return_attention_mask=False,
                    return_token_type_ids=False,
                )["input_ids"]
            )
            for item in group:
                encoded[id(item)] = [next(ids) for _ in item.payload.inputs]
        rows: list[Row] = []
        for item in items:
            prompts = encoded[id(item)]
            truncate = item.params.truncate
            truncate = bool(self.cfg.truncate) if truncate is None else truncate
            too_long = [i for i, ids in enumerate(prompts) if len(ids) > self.max_length]
            if too_long and not truncate:
                n = len(prompts[too_long[0]])
                item.error = InputError(
                    f"inputs[{too_long[0]}] is {n} tokens; the prompt limit is {self.max_length} tokens (max_length). "
                    "Shorten it, or send parameters.truncate=true to keep its last tokens",
                    status=413,
                    reason="input_too_long",
                )
                continue
            rows.extend(self.row(item, ids[-self.max_length :]) for ids in prompts)
        return Prompts(rows) if rows else None

    def row(self, item: Item[GenerationParams], prompt: list[int]) -> Row:
        p, d = item.params, self.defaults
        sample = bool(
            p.do_sample
            if p.do_sample is not None
            else (d["do_sample"] or any(v is not None for v in (p.temperature, p.top_p, p.top_k)))
        )
        seed = p.seed if p.seed is not None else random.SystemRandom().randrange(MAX_SEED)
        generator = None
        if sample:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
        max_new = p.max_new_tokens or self.cfg.default_max_new_tokens
        return Row(
            item=item,
            prompt=prompt,
            max_new=max(1, min(max_new, self.max_positions - len(prompt))),
            sample=sample,
            temperature=p.temperature if p.temperature is not None else d["temperature"],
            top_k=min(p.top_k if p.top_k is not None else (d["top_k"] or 0), self.vocab_size),
            top_p=p.top_p if p.top_p is not None else d["top_p"],
            repetition_penalty=p.repetition_penalty if p.repetition_penalty is not None else d["repetition_penalty"],
            stops=[p.stop] if isinstance(p.stop, str) else list(p.stop or []),
            seed=seed,
            generator=generator,
            stream=item.payload.stream,
            ignore_eos=bool(p.ignore_eos),
            deadline=None if p.timeout is None else time.perf_counter() + p.timeout,
        )

    def forward(self, batch: Prompts) -> list:
        """Static batching: every row admitted at once and decoded to its end."""
        for _ in self.steps(batch):
            pass
        return batch.rows

    def steps(self, batch: Prompts) -> Iterator[Stepped]:
        """Static batching, a step at a time (what each step streamed); the rows hold the answers."""
        batch.started_at = time.perf_counter()
        return self.decoder().steps(batch.rows)

    def decoder(self) -> Decoder:
        """A decoder over this model: on torch, with a KV cache of its own; on llama.cpp, over the
        worker's one context (one decoder at a time)."""
        engine = self.engine if self.engine is not None else TorchLM(self.model, self.pad_id)
        return Decoder(engine, self.tokenizer, self.eos)

    def usage(self, batch: Prompts) -> Usage:
        rows = batch.rows
        return Usage(
            input_tokens=sum(len(r.prompt) for r in rows),
            generated_tokens=sum(len(r.tokens) for r in rows),
            first_token_seconds=[r.first_token_at - batch.started_at for r in rows],
            per_token_seconds=[r.per_token_seconds for r in rows if r.per_token_seconds is not None],
        )

    def results(self, item: Item[GenerationParams], outputs: list[Row]) -> list[Generation]:
        return [
            Generation(
                r.text,
                typing.cast(str, r.finish),  # every row is finished when its results are read
                len(r.prompt),
                len(r.tokens),
                r.seed if r.sample else None,
                tail=r.text[r.sent :] if r.stream else "",
            )
            for r in outputs
        ]
