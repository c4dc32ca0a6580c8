"""A row's text as its tokens come: incremental detokenizing, stop strings, and how much of the
text may be streamed yet.

The text of a row is what `tokenizer.decode(tokens, skip_special_tokens=True)` gives for its
tokens so far, but for a last token that ends inside a character, which waits for the tokens
that complete it (and at the row's end, `final`, is decoded with the cut character dropped, as
`decode` and a trailing "\ufffd" stripped would give). It is built a token at a time with
tokenizers' DecodeStream, which decodes only the last few tokens each step, instead of decoding
the row's whole answer again every step (what the decoder did until issue 27: O(answer) a token).
A tokenizer that cleans up spaces after decoding (`clean_up_tokenization_spaces`) changes text
already decoded, so for it the whole answer is decoded each step, as before.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream


class Text:
    """One row's detokenizer: `add(tokens)` after each new token -> `value` grows (or not, inside
    a character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.value = ""
        self.stream = (
            None
            if getattr(tokenizer, "clean_up_tokenization_spaces", False)
            else DecodeStream(skip_special_tokens=True)
        )
        self.held = False  # the last tokens end inside a character: value does not show them yet

    def add(self, tokens: list[int]) -> None:
        """`tokens`: the row's tokens so far, the new one last."""
        if self.stream is not None:
            try:
                piece = self.stream.step(self.tokenizer.backend_tokenizer, tokens[-1])
            except Exception:  # noqa: BLE001 - DecodeStream refuses a window it cannot decode as a suffix
                self.stream = None
            else:
                if piece:
                    self.value += piece
                self.held = piece is None
                return
        self.value = self.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")

    def final(self, tokens: list[int]) -> str:
        """The whole text once the row ends: a character cut short at the end dropped, what came
        before it in its token kept."""
        if self.held:
            return self.tokenizer.decode(tokens, skip_special_tokens=True).rstrip("\ufffd")
        return self.value


def first_stop(text: str, stops: list[str], since: int = 0) -> int | None:
    """Where the earliest stop string starts in text, looking from `since` on."""
    found = [i for i in (text.find(s, max(0, since - len(s))) for s in stops) if i >= 0]
    return min(found) if found else None


def safe_prefix(text: str, stops: list[str]) -> int:
    """How much of text can be streamed: not a half-decoded character, not a stop string's start."""
    end = len(text.rstrip("\ufffd"))
    for stop in stops:
        for n in range(min(len(stop) - 1, end), 0, -1):
            if text[:end].endswith(stop[:n]):
                end -= n
                break
    return max(end, 0)
