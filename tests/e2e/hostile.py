"""Malformed requests of many shapes, reproducible from a seed: what the fuzz test sends.

Each is (content type, body bytes, what it tries, the status it must get). Each shape is built
so that its answer is known: every request that breaks a rule gets that rule's 4xx, and the
few valid-but-odd shapes get a 200; the fuzz checks every answer against its own status, so
one validation that went missing fails it.
"""

from __future__ import annotations

import json
import random
from typing import Iterator

JSON = "application/json"
# Non-ASCII in every value an error message may quote: each once killed the worker (issue 15).
NON_ASCII = ["é", "🙂", "ünïcode", "\u2028", "a\u202eb", "ﷺ", "日本語"]


# inputs values that are never one text or a list of texts
WRONG_INPUTS = [None, True, False, 0, -1, 1, 2**63, -(2**70), 10**400, 1.5, -0.0, 1e308, "", "   ", [], {}, [1, "a"],
                {"a": 1}, [["x"]], [None]]
# parameter values no parameter of any task takes (each expects a number, a bool, a string or a list of strings)
NEVER_A_PARAMETER = [{"a": 1}, {}, [1, "a"], [[1]], [None], {"é": "🙂"}]
# generation parameters out of their documented ranges (docs/apis/native.md)
OUT_OF_RANGE = {"temperature": [-1, 0, 101], "top_p": [0, 1.5, -1], "top_k": [0, -3], "max_new_tokens": [0, -1, 100_000],
                "repetition_penalty": [0, 11], "seed": [-1, 2**63], "timeout": [0, -1, 10**6]}
PARAMETER_NAMES = {"embedding": ["normalize", "truncate"],
                   "generation": ["max_new_tokens", "temperature", "top_p", "top_k", "do_sample", "repetition_penalty",
                                  "stop", "seed", "truncate", "ignore_eos", "timeout"]}
ODD_TEXT_REFUSED = ["\ud800", "a\udfffb", "\n\t\r", " "]  # lone surrogates; nothing but whitespace
ODD_TEXT_VALID = ["\x00\x01\x02", "\u202e\u200b", "🙂" * 50, "\\", '"', "ﷺ" * 10, "é", "日本語"]


def _nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def _dumps(value) -> bytes:
    # allow_nan: Python's json writes NaN and Infinity, which json.loads reads back
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def requests(seed: int, count: int, generation: bool = False) -> Iterator[tuple[str, bytes, str, int]]:
    """`count` hostile requests, each (content type, body, what it tries, the status it must get),
    for an embedding model or, with `generation`, a generation model (whose valid requests then ask
    for 2 tokens). Every status is what the documented API gives that request: 400 for a body it
    cannot read or a value out of place, 413 past a size limit, 415 for a form, and 200 for the
    shapes that are valid, however odd (a prompt of control characters, say)."""
    rng = random.Random(seed)
    task = "generation" if generation else "embedding"
    small = {"max_new_tokens": 2} if generation else {}

    def wrong_parameter():
        name = rng.choice(PARAMETER_NAMES[task])
        if task == "generation" and name in OUT_OF_RANGE and rng.random() < 0.5:
            return {**small, name: rng.choice(OUT_OF_RANGE[name])}
        return {**small, name: rng.choice(NEVER_A_PARAMETER)}

    shapes = [
        lambda: ("application/octet-stream", b"\xff" + rng.randbytes(rng.randrange(0, 200)), "random bytes, not UTF-8", 400),
        lambda: (JSON, _dumps({"inputs": ["a b c", "d"], "parameters": small})[: rng.randrange(1, 30)], "truncated JSON", 400),
        lambda: (JSON, b"[" * rng.choice([50, 999, 5000, 100_000]) + b"]" * rng.choice([0, 10]), "deep nesting of the body", 400),
        lambda: (JSON, _dumps({"inputs": _nested(rng.choice([10, 500, 900]), "x")}), "deep nesting in inputs", 400),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": {rng.choice(PARAMETER_NAMES[task]): _nested(rng.choice([5, 900]))}}),
                 "deep nesting in a parameter", 400),
        lambda: (JSON, _dumps({"inputs": rng.choice(WRONG_INPUTS), "parameters": small}), "inputs of a wrong type", 400),
        lambda: (JSON, _dumps({"inputs": ["ok", rng.choice(WRONG_INPUTS)], "parameters": small}), "an inputs item of a wrong type", 400),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": wrong_parameter()}), "a parameter of a wrong type or out of range", 400),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": {**small, rng.choice(["p", *NON_ASCII]) + str(rng.randrange(100)): 1}}),
                 "unknown parameter", 400),
        lambda: (JSON, _dumps({"inputs": "x", rng.choice(["input", "text", "prompt", "Inputs", "paramètres", *NON_ASCII]): "y"}),
                 "unknown top-level key", 400),
        lambda: (JSON, _dumps({"inputs": "x", "parameters": rng.choice([True, False, 0, -1, 1, 2**63, [1], "x"])}),
                 "parameters not an object", 400),
        lambda: (JSON, _dumps(rng.choice([None, True, 0, 1.5, [], [1, "a"], [{"inputs": "x"}]])), "body neither an object nor a text", 400),
        lambda: (JSON, _dumps({"inputs": ["x"] * rng.choice([65, 1000])}), "too many inputs", 413),
        lambda: (JSON, _dumps({"inputs": "word " * rng.choice([5000, 20000])}), "input over max_chars_per_input", 413),
        lambda: (JSON, _dumps({"inputs": "x " * 3000, "parameters": {**small, "truncate": False}}), "over max_length, truncate off", 413),
        lambda: (JSON, _dumps({"inputs": [rng.choice(ODD_TEXT_REFUSED)], "parameters": small}), "odd text, refused", 400),
        lambda: (JSON, _dumps({"inputs": [rng.choice(ODD_TEXT_VALID)], "parameters": small}), "odd text, valid", 200),
        lambda: (JSON, _dumps({"messages": rng.choice([[], "hi", [{"role": "user"}], [{"role": 1, "content": "x"}],
                                                      [{"role": "user", "content": "\ud800"}], [{"role": "assistant", "content": "x"}],
                                                      [{"role": rng.choice(NON_ASCII), "content": "x"}],
                                                      [{"role": "user", "content": "x", rng.choice(NON_ASCII): 1}]]),
                               "parameters": small}), "malformed messages", 400),
        lambda: (JSON, _dumps({"inputs": ["a", "b"], "stream": rng.choice([True, "yes", 1, None, *NON_ASCII])}), "stream misused", 400),
        lambda: ("application/x-www-form-urlencoded", b"inputs=hello&parameters=1", "form-encoded body", 415),
        lambda: ("text/plain", rng.choice([b"", b"   ", b"\xff\xfe"]), "empty, blank or non-UTF-8 text", 400),
        lambda: ("text/plain", rng.choice([b"{not json", b"[1,2"]), "text that reads as broken JSON: a text", 200),
        lambda: (JSON, b'{"inputs": "x", "parameters": {"top_p": NaN, "temperature": Infinity}}', "NaN and Infinity", 400),
    ]
    for _ in range(count):
        yield rng.choice(shapes)()


# One request per field whose value a refusal quotes, with a non-ASCII value, and what the
# error message must quote: (body, quoted). Each was a 500 "Worker died." before issue 15.
NON_ASCII_REFUSALS = [
    ({"inputs": "a", "parameters": {"truncate": "é"}}, "got 'é'"),  # a bad parameter value
    ({"inputs": "a", "parameters": {"ünïcode": 1}}, "unknown key 'ünïcode'"),  # an unknown parameter
    ({"inputs": "a", "paramètres": 1}, "unknown key 'paramètres'"),  # an unknown key
    ({"inputs": "a", "stream": "🙂"}, "got '🙂'"),  # a bad stream value
    ({"messages": [{"role": "ǘser", "content": "hi"}]}, "got 'ǘser'"),  # a bad messages entry
]
