"""Generated OpenAI request bodies through the worker's OpenAI routes, the whole way TorchServe
takes them (as tests/unit/test_fuzz_bodies.py does for the HF shape): every answer is a 2xx
or a 4xx with OpenAI's error body, every frame readable, the status phrase ASCII, and the
good request of each batch answered."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.protocols.openai import KEYS, NEUTRAL
from transerve.operate.inprocess import LocalWorker
from transerve.build.spec import find_spec

EXAMPLES = 250  # per task

ODD = ["é", "🙂", "\ud800", "\x00", "\n", "\u2028", '"', "\\"]
char = st.one_of(st.characters(codec=None, exclude_categories=()), st.sampled_from(ODD))
text = st.text(char, max_size=30) | st.just("data: [DONE]\n\n")
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([2**63, -(2**70), 10**400]),
                 st.floats(allow_nan=True, allow_infinity=True), text)
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3), max_leaves=8)
typical = st.one_of(st.integers(-3, 600), st.floats(-1, 3), st.booleans(), st.none(), text, st.lists(text, max_size=5),
                    st.sampled_from(["float", "base64", "none", {"include_usage": True}, {"type": "text"}]))
part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | text, "text": text | value})
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | text, "content": text | st.lists(part, max_size=2) | value},
    optional={"name": text})


def bodies(route: str, model: str) -> st.SearchStrategy[dict]:
    keys = st.sampled_from([*KEYS[route], *NEUTRAL]) | text
    known = st.fixed_dictionaries({}, optional={
        "model": st.just(model) | text, "messages": st.lists(message, max_size=3) | value,
        "prompt": text | st.lists(text | st.integers(0, 50_000), max_size=3) | value,
        "input": text | st.lists(text | st.integers(0, 30_000), max_size=3) | value,
    })
    return st.builds(lambda a, b: {**a, **b}, known, st.dictionaries(keys, typical | value, max_size=4))


GOOD = {
    "v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
    "v1/completions": {"prompt": "hi", "max_tokens": 1},
    "v1/embeddings": {"input": "hi"},
}


@pytest.fixture(scope="module", params=["embedding", "generation"])
def worker(request, minilm):
    if request.param == "embedding":
        mv, routes = minilm.version(), ["v1/embeddings"]
    else:  # valid requests decode at most 2 tokens of at most 64-token prompts
        mv = find_spec("smollm2-chat").version("1.0").with_handler(max_new_tokens=2, default_max_new_tokens=1, max_length=64)
        routes = ["v1/chat/completions", "v1/completions"]
    worker = LocalWorker(mv)
    yield mv.name, routes, worker
    worker.close()


def test_generated_openai_bodies_get_2xx_or_4xx_in_openai_shape(worker):
    model, routes, local = worker

    @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data):
        route = data.draw(st.sampled_from(routes))
        batch = data.draw(st.lists(bodies(route, model), min_size=1, max_size=3))
        encode = data.draw(st.sampled_from([lambda b: json.dumps(b).encode(),
                                            lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass")]))
        sent = [("application/json", encode(b)) for b in batch] + [("application/json", json.dumps({**GOOD[route], "model": model}).encode())]
        answers = local.predict_raw(sent, path=route)
        for answer, (_, body) in zip(answers, sent):
            assert answer.status == 200 or 400 <= answer.status < 500, (answer, body)
            assert answer.phrase.isascii() and answer.phrase.isprintable(), answer.phrase
            if answer.status != 200:
                error = answer.body["error"]
                assert set(error) == {"message", "type", "param", "code"} and error["message"], answer.body
        assert answers[-1].status == 200, answers[-1]

    run()
