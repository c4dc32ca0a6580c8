"""Malformed requests of many shapes, reproducible from a seed: what the fuzz test sends.

Each is (content type, body bytes, what it tries). None is a request a correct server
may answer with a 5xx: every one must get a 4xx saying what was wrong (or, for the few
shapes that happen to be valid, a 200).
"""

from __future__ import annotations

import json
import random
from typing import Iterator

JSON = "application/json"
# Non-ASCII in every value an error message may quote: each once killed the worker (issue 15).
NON_ASCII = ["é", "🙂", "ünïcode", "\u2028", "a\u202eb", "ﷺ", "日本語"]
VALUES = [None, True, False, 0, -1, 1, 2**63, -(2**70), 10**400, 1.5, -0.0, 1e308, "x", "", [], {}, [1, "a"], {"a": 1},
          *NON_ASCII, ["é"], {"é": "🙂"}]
PARAMETERS = ["max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty", "stop", "seed",
              "truncate", "normalize", "top_k", "aggregation_strategy", "ignore_labels"]
ODD_TEXT = ["\ud800", "a\udfffb", "\x00\x01\x02", "\u202e\u200b", "🙂" * 50, "\n\t\r", "\\", '"', "ﷺ" * 10]


def _nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _dumps(value) -> bytes:
    # allow_nan: Python's json writes NaN and Infinity, which json.loads reads back
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def requests(seed: int, count: int, generation: bool = False) -> Iterator[tuple[str, bytes, str]]:
    """`count` hostile requests; with `generation`, valid-looking ones ask for very few tokens."""
    rng = random.Random(seed)
    small = {"max_new_tokens": 2} if generation else {}
    shapes = [
        lambda: ("application/octet-stream", rng.randbytes(rng.randrange(1, 200)), "random bytes"),
        lambda: (JSON, _dumps({"inputs": ["a b c", "d"], "parameters": small})[: rng.randrange(1, 30)], "truncated JSON"),
        lambda: (JSON, b"[" * rng.choice([50, 999, 5000, 100_000]) + b"]" * rng.choice([0, 10]), "deep nesting of the body"),
        lambda: (JSON, _dumps({"inputs": _nested(rng.choice([10, 500, 900]), "x")}), "deep nesting in inputs"),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": {rng.choice(PARAMETERS): _nested(rng.choice([5, 900]))}}),
                 "deep nesting in a parameter"),
        lambda: (JSON, _dumps({"inputs": rng.choice(VALUES)}), "inputs of a wrong type"),
        lambda: (JSON, _dumps({"inputs": [rng.choice(VALUES) for _ in range(rng.randrange(1, 4))]}), "inputs items of wrong types"),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": {**small, rng.choice(PARAMETERS): rng.choice(VALUES)}}),
                 "a parameter of a wrong type or out of range"),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": {**small, rng.choice(["p", *NON_ASCII]) + str(rng.randrange(100)): 1}}),
                 "unknown parameter"),
        lambda: (JSON, _dumps({"inputs": "x", rng.choice(["input", "text", "prompt", "Inputs", "paramètres", *NON_ASCII]): "y"}),
                 "unknown top-level key"),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": rng.choice(VALUES[:8] + [[1]])}), "parameters not an object"),
        lambda: (JSON, _dumps(rng.choice(VALUES)), "body not an object"),
        lambda: (JSON, _dumps({"inputs": ["x"] * rng.choice([65, 1000])}), "too many inputs"),
        lambda: (JSON, _dumps({"inputs": "word " * rng.choice([5000, 20000])}), "input over max_chars_per_input"),
        lambda: (JSON, _dumps({"inputs": "x " * 3000, "parameters": {**small, "truncate": False}}), "over max_length, truncate off"),
        lambda: (JSON, _dumps({"inputs": [rng.choice(ODD_TEXT)], "parameters": small}), "odd Unicode (lone surrogates, controls)"),
        lambda: (JSON, _dumps({"messages": rng.choice([[], "hi", [{"role": "user"}], [{"role": 1, "content": "x"}],
                                                      [{"role": "user", "content": "\ud800"}], [{"role": "assistant", "content": "x"}],
                                                      [{"role": rng.choice(NON_ASCII), "content": "x"}],
                                                      [{"role": "user", "content": "x", rng.choice(NON_ASCII): 1}]]),
                               "parameters": small}), "malformed messages"),
        lambda: (JSON, _dumps({"inputs": ["a", "b"], "stream": rng.choice([True, "yes", 1, None, *NON_ASCII])}), "stream misused"),
        lambda: ("application/x-www-form-urlencoded", b"inputs=hello&parameters=1", "form-encoded body"),
        lambda: ("text/plain", rng.choice([b"", b"   ", b"\xff\xfe", b"{not json", b"[1,2"]), "empty or broken text"),
        lambda: (JSON, b'{"inputs": "x", "parameters": {"top_p": NaN, "temperature": Infinity}}', "NaN and Infinity"),
    ]
    for _ in range(count):
        content_type, body, what = rng.choice(shapes)()
        yield content_type, body, what


# One request per field whose value a refusal quotes, with a non-ASCII value, and what the
# error message must quote: (body, quoted). Each was a 500 "Worker died." before issue 15.
NON_ASCII_REFUSALS = [
    ({"inputs": "a", "parameters": {"truncate": "é"}}, "got 'é'"),  # a bad parameter value
    ({"inputs": "a", "parameters": {"ünïcode": 1}}, "unknown key 'ünïcode'"),  # an unknown parameter
    ({"inputs": "a", "paramètres": 1}, "unknown key 'paramètres'"),  # an unknown key
    ({"inputs": "a", "stream": "🙂"}, "got '🙂'"),  # a bad stream value
    ({"messages": [{"role": "ǘser", "content": "hi"}]}, "got 'ǘser'"),  # a bad messages entry
]
