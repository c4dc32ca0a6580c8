"""handlers/generation/text.py: a row's text built a token at a time (tokenizers' DecodeStream)
is, after every token, what decoding all its tokens gives, but for a last token that ends inside
a character (held back until the character is complete); at the row's end, the full decode with
the cut character dropped. The stop-string and streamable-prefix rules on their own."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from handlers.generation.text import Text, first_stop, safe_prefix


@pytest.fixture(scope="module")
def tokenizer(chat_static):
    return chat_static.handler.task.tokenizer  # SmolLM2's byte-level BPE, from the shipped GGUF


def check_incremental(tokenizer, tokens: list[int]) -> None:
    text = Text(tokenizer)
    assert text.stream is not None  # SmolLM2's tokenizer does not clean up spaces: the incremental path
    for n in range(1, len(tokens) + 1):
        text.add(tokens[:n])
        full = tokenizer.decode(tokens[:n], skip_special_tokens=True)
        if text.value != full:  # only a last token that ends inside a character is held back
            assert full.endswith("\ufffd") and full.startswith(text.value) and text.held, (tokens[:n], text.value, full)
        assert text.final(tokens[:n]) == full.rstrip("\ufffd"), tokens[:n]


def test_answers_the_model_gives(tokenizer):
    for sentence in ["Hello, world! Ünïcödé café 日本語 🚀🚀", "  spaces\n\nand\ttabs  ", "<|im_start|>assistant\nHi<|im_end|>"]:
        check_incremental(tokenizer, tokenizer(sentence, add_special_tokens=False).input_ids)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_token_sequence(tokenizer, data):
    """Random ids, byte tokens that cut a character in two and special tokens among them."""
    specials = sorted(tokenizer.all_special_ids)
    ids = st.one_of(st.integers(0, len(tokenizer) - 1), st.integers(0, 300), st.sampled_from(specials))
    check_incremental(tokenizer, data.draw(st.lists(ids, min_size=1, max_size=24)))


def test_a_tokenizer_that_cleans_up_spaces_decodes_the_whole_answer(minilm):
    from transformers import AutoTokenizer

    wordpiece = AutoTokenizer.from_pretrained(minilm.version().source_dir(), clean_up_tokenization_spaces=True)
    tokens = wordpiece("Hello , world . It 's here", add_special_tokens=False).input_ids
    text = Text(wordpiece)
    for n in range(1, len(tokens) + 1):
        text.add(tokens[:n])
        assert text.value == wordpiece.decode(tokens[:n], skip_special_tokens=True)
    assert text.stream is None and text.value == "hello, world. it's here"  # cleaned up: not a suffix-only change


def test_stop_strings_and_the_streamable_prefix():
    assert first_stop("one two three", ["two", "three"]) == 4
    assert first_stop("one two three", ["two"], since=8) is None  # looked at already
    assert first_stop("one tw", ["two"]) is None
    assert safe_prefix("hello wo", ["world"]) == len("hello ")  # could be the start of a stop
    assert safe_prefix("caf\ufffd", []) == 3
