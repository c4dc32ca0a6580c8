"""Token classification (NER and the like): entities with character offsets.

Aggregation follows transformers' token-classification pipeline, so its users get the
answers they know: `none` labels every token; `simple` joins adjacent tokens of the same
entity; `first`, `max` and `average` first make every word agree on one label (chosen
from its first token, its most confident token, or its mean scores) and then join.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from handlers.config import HandlerConfig
from handlers.payload import InputError, Payload
from handlers.results import Entities
from handlers.tasks import TaskName
from handlers.tasks.base import EncoderTask, Item, Tokens

Strategy = Literal["none", "simple", "first", "max", "average"]


@dataclass(frozen=True)
class TokenClassificationParams:
    aggregation_strategy: Strategy | None = None  # None: the model's configured aggregation
    ignore_labels: list | None = None  # None: ["O"]
    truncate: bool | None = None


@dataclass
class Token:
    index: int  # position in the tokenized row, special tokens counted
    piece: str  # the tokenizer's token string
    scores: torch.Tensor  # one probability per label
    start: int
    end: int
    subword: bool  # continues the word of the token before it


class TokenClassificationTask(EncoderTask[TokenClassificationParams]):
    name = TaskName.TOKEN_CLASSIFICATION
    Params = TokenClassificationParams

    def load(self, model_dir: str, cfg: HandlerConfig, device: torch.device) -> None:
        super().load(model_dir, cfg, device)
        # Word-aware tokenizers (WordPiece's "##") tell subwords apart exactly; others get
        # the pipeline's fallback: a token glued to the previous character continues a word.
        backend = getattr(self.tokenizer, "_tokenizer", None)
        self.word_aware = bool(backend and getattr(backend.model, "continuing_subword_prefix", None))

    def parse(self, payload: Payload) -> Item[TokenClassificationParams]:
        item = super().parse(payload)
        ignore = item.params.ignore_labels
        if ignore is not None and not all(isinstance(label, str) for label in ignore):
            raise InputError("parameters.ignore_labels must be a list of label strings", reason="invalid_parameter")
        return item

    def collate(self, items: Sequence[Item[TokenClassificationParams]]) -> Tokens | None:
        return self.tokens(items, return_offsets_mapping=True, return_special_tokens_mask=True)

    def forward(self, batch: Tokens) -> list:
        def probabilities(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.engine(ids, mask).float(), dim=-1).cpu()

        rows = self.per_row(batch, probabilities)
        return [(probs[:n], row) for probs, n, row in zip(rows, batch.lengths, batch.rows)]

    def results(self, item: Item[TokenClassificationParams], outputs: list) -> list[Entities]:
        strategy = item.params.aggregation_strategy or self.cfg.aggregation
        ignore = {"O"} if item.params.ignore_labels is None else set(item.params.ignore_labels)
        return [
            Entities(
                [
                    e
                    for e in self.entities(text, probs, row, strategy)
                    if e.get("entity_group", e.get("entity")) not in ignore
                ]
            )
            for text, (probs, row) in zip(item.payload.inputs, outputs)
        ]

    def entities(self, text: str, probs: torch.Tensor, row: dict, strategy: str) -> list[dict]:
        tokens = self.tokens_of(text, probs, row)
        if strategy in ("none", "simple"):
            labeled = [
                {**self.best(t.scores), "index": t.index, "word": t.piece, "start": t.start, "end": t.end}
                for t in tokens
            ]
            if strategy == "none":
                return labeled
        else:
            labeled = [self.word(group, strategy) for group in words(tokens)]
        return [self.group(run) for run in runs(labeled)]

    def tokens_of(self, text: str, probs: torch.Tensor, row: dict) -> list[Token]:
        tokens = []
        for index, (token_id, (start, end), special) in enumerate(
            zip(row["input_ids"], row["offset_mapping"], row["special_tokens_mask"])
        ):
            if special:
                continue
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            surface = text[start:end]
            if self.word_aware:
                subword = len(piece) != len(surface)
            else:
                subword = start > 0 and " " not in text[start - 1 : start + 1]
            if token_id == self.tokenizer.unk_token_id:
                piece, subword = surface, False
            tokens.append(Token(index, piece, probs[index], start, end, subword))
        return tokens

    def best(self, scores: torch.Tensor) -> dict:
        label = int(scores.argmax())
        return {"entity": self.labels[label], "score": float(scores[label])}

    def word(self, group: list[Token], strategy: str) -> dict:
        if strategy == "first":
            chosen = self.best(group[0].scores)
        elif strategy == "max":
            chosen = self.best(max(group, key=lambda t: float(t.scores.max())).scores)
        else:  # average
            chosen = self.best(torch.stack([t.scores for t in group]).mean(0))
        word = self.tokenizer.convert_tokens_to_string([t.piece for t in group])
        return {**chosen, "word": word, "start": group[0].start, "end": group[-1].end}

    def group(self, run: list[dict]) -> dict:
        return {
            "entity_group": run[0]["entity"].split("-", 1)[-1],
            "score": sum(e["score"] for e in run) / len(run),
            "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in run]),
            "start": run[0]["start"],
            "end": run[-1]["end"],
        }


def words(tokens: list[Token]) -> list[list[Token]]:
    """Tokens grouped into words: a subword joins the word before it."""
    groups: list[list[Token]] = []
    for token in tokens:
        if groups and token.subword:
            groups[-1].append(token)
        else:
            groups.append([token])
    return groups


def tag(label: str) -> tuple[str, str]:
    """("B" | "I", entity) of an IOB label; a label without a prefix continues ("I")."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


def runs(labeled: list[dict]) -> list[list[dict]]:
    """Adjacent tokens (or words) of one entity; a B- label always starts a new one."""
    groups: list[list[dict]] = []
    for entity in labeled:
        bi, entity_tag = tag(entity["entity"])
        if groups and bi != "B" and tag(groups[-1][-1]["entity"])[1] == entity_tag:
            groups[-1].append(entity)
        else:
            groups.append([entity])
    return groups
