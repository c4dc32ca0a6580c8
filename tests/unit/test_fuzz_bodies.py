"""Generated request bodies through every task's worker, the whole way TorchServe takes them.

Bodies come from the grammar of the tasks' JSON (any key, any value type, any Unicode:
astral characters, lone surrogates, controls; deep and wide structures), sent as JSON, as
UTF-8 JSON with raw surrogates, as text or as bytes, in batches with one good request.
They go through TorchServe's own request reader, Service.predict and response encoder
(`transerve.operate.inprocess.LocalWorker.predict_raw`), and the reply frames are read as the
frontend reads them. Every answer must be a 2xx or a 4xx with a JSON error body, every
frame readable (an unreadable one restarts a real worker), the good request answered,
and a gRPC request's last reply must end its stream (or StreamPredictions kills the worker).

Bodies built with one defect each (test_bodies_with_a_defect_get_400_never_200) must get a 400,
never a 200: a validation that went missing would let one through.

The failures this has found are kept as explicit cases in test_regressions_answer_4xx.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handlers.payload import ROLES
from handlers.protocols.hf import TOP_LEVEL_KEYS
from handlers.tasks import task_class
from transerve.operate.inprocess import LocalWorker
from transerve.build.spec import find_spec

# Per task; `make test` runs the four with a fixed seed in CI (tests/conftest.py).
EXAMPLES = 600

ODD = ["é", "🙂", "\ud800", "\udfff", "\x00", "\n", "\r", "\x7f", "\u202e", "ﷺ", '"', "\\", "\u2028", "\ufeff"]
char = st.one_of(st.characters(codec=None, exclude_categories=()), st.sampled_from(ODD))
text = st.text(char, max_size=40)
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.sampled_from([2**63, -(2**70), 10**400]),
    st.floats(allow_nan=True, allow_infinity=True), text,
)
value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=12)


def nested(depth: int, inner=1):
    for _ in range(depth):
        inner = [inner] if depth % 2 else {"k": inner}
    return inner


deep = st.integers(10, 900).map(nested)  # deeper than json.dumps goes: deep_bodies
many_texts = st.lists(text, max_size=80)  # past max_inputs_per_request (64) at times
long_text = st.integers(1, 30_000).map(lambda n: "word " * (n // 5))


def bodies(task: str) -> st.SearchStrategy[dict]:
    """A request body of the shapes `task` reads, and of the shapes it must refuse."""
    params = [f.name for f in dataclasses.fields(task_class(task).Params)]
    typical = st.one_of(st.integers(-5, 300), st.floats(-2, 200), st.booleans(), st.none(), text,
                        st.lists(text, max_size=9), st.sampled_from(["none", "simple", "first", "max", "average"]))
    parameters = st.dictionaries(st.sampled_from(params) | text, typical | value | deep, max_size=4)
    message = st.fixed_dictionaries(
        {"role": st.sampled_from(ROLES) | text | value, "content": text | value | long_text},
        optional={"name": text, "extra": value},
    )
    messages = st.lists(message, max_size=5) | value
    inputs = text | long_text | many_texts | st.lists(value, max_size=3) | value | deep
    known = st.fixed_dictionaries({}, optional={
        "inputs": inputs, "messages": messages, "parameters": parameters | value,
        "stream": st.booleans() | value, "instances": inputs,
    })
    unknown = st.dictionaries(text.filter(lambda k: k not in TOP_LEVEL_KEYS), value, max_size=2)
    return st.builds(lambda a, b, first: {**a, **b} if first else {**b, **a}, known, unknown, st.booleans())


def deep_bodies(task: str) -> st.SearchStrategy[bytes]:
    """Nesting far past Python's recursion limit, written as bytes (json.dumps cannot)."""
    params = [f.name for f in dataclasses.fields(task_class(task).Params)]
    where = st.sampled_from(['{"inputs": %s}', '{"instances": %s}', '{"messages": %s}', '%s']) | st.sampled_from(params).map(
        lambda p: '{"inputs": "a", "parameters": {"%s": %%s}}' % p)
    return st.builds(lambda w, n, o: (w % (o[0] * n + o[1] * n)).encode(), where, st.integers(900, 100_000),
                     st.sampled_from([("[", "]"), ('{"a":', "}")]))


def requests(task: str) -> st.SearchStrategy[tuple[str, bytes]]:
    """One request as it reaches the worker: content type and body bytes."""
    json_type = st.sampled_from(["application/json", "application/json; charset=utf-8"])
    return st.one_of(
        st.tuples(json_type, bodies(task).map(lambda b: json.dumps(b).encode())),
        # raw UTF-8, lone surrogates written as the (invalid) bytes a broken client would send
        st.tuples(json_type, bodies(task).map(lambda b: json.dumps(b, ensure_ascii=False).encode("utf-8", "surrogatepass"))),
        st.tuples(json_type, deep_bodies(task)),
        st.tuples(st.just("text/plain"), text.map(lambda t: t.encode("utf-8", "surrogatepass"))),
        st.tuples(st.sampled_from(["application/octet-stream", "application/json", "text/plain"]), st.binary(max_size=64)),
        st.tuples(st.just("application/x-www-form-urlencoded"), st.just(b"inputs=hello")),
    )


GOOD = {"inputs": "a good request"}


@pytest.fixture(scope="module", params=["embedding", "classification", "token_classification", "generation"])
def worker(request, minilm, tiny_bert, tmp_path_factory):
    from transformers import BertForSequenceClassification, BertForTokenClassification

    task = request.param
    if task == "embedding":
        mv = minilm.version()
    elif task == "generation":  # valid requests decode at most 2 tokens of at most 64-token prompts
        mv = find_spec("smollm2-chat").version("1.0").with_handler(max_new_tokens=2, default_max_new_tokens=1, max_length=64)
    else:
        model_class = BertForSequenceClassification if task == "classification" else BertForTokenClassification
        mv, _ = tiny_bert(tmp_path_factory.mktemp(task), model_class, task, ["O", "B-PER", "I-PER"])
    worker = LocalWorker(mv)
    yield task, worker
    worker.close()


def check(answers, sent, grpc: bool) -> None:
    for answer, (content_type, body) in zip(answers, sent):
        assert answer.status == 200 or 400 <= answer.status < 500, (answer, content_type, body)
        if answer.status != 200:
            assert isinstance(answer.body, dict) and answer.body["code"] == answer.status, answer
            assert answer.body["message"], answer
        # gRPC: the last reply ends the stream (without it StreamPredictions kills the worker);
        # REST: a reply that was not streamed carries no stream header (else no status line)
        if grpc:
            assert answer.headers.get("ts_stream_next") == "false", answer
        elif not answer.chunks:
            assert "ts_stream_next" not in answer.headers, answer
    assert answers[-1].status == 200, answers[-1]  # the good request of the batch


def test_generated_bodies_get_2xx_or_4xx_and_readable_frames(worker):
    task, local = worker

    @settings(max_examples=EXAMPLES, suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(requests(task), min_size=1, max_size=3), grpc=st.booleans())
    def run(batch, grpc):
        sent = [*batch, ("application/json", json.dumps(GOOD).encode())]
        check(local.predict_raw(sent, grpc=grpc), sent, grpc)

    run()
    [after] = local.predict([GOOD])  # the same worker object still answers
    assert after.status == 200


def malformed(task: str) -> st.SearchStrategy[tuple[dict, str]]:
    """A valid body with one defect the API refuses, and the defect: every one must be a 400 (the
    generated bodies above may be valid or not, so those accept a 200; these never do)."""
    params = [f.name for f in dataclasses.fields(task_class(task).Params)]
    base = {"inputs": "a good request", "parameters": {"max_new_tokens": 1} if task == "generation" else {}}
    not_text = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                         st.dictionaries(text, leaf, max_size=2), st.lists(st.integers(), min_size=1, max_size=3))
    blank = st.text(st.sampled_from(" \t\n\r\x0b\x0c\u3000"), max_size=5)
    never_a_parameter = st.one_of(st.dictionaries(text, leaf, max_size=2), st.lists(st.none() | st.integers(), min_size=1, max_size=2))
    defects = [
        st.tuples(text.filter(lambda k: k not in TOP_LEVEL_KEYS), value).map(lambda kv: ({**base, kv[0]: kv[1]}, "unknown key")),
        st.tuples(text.filter(lambda k: k not in params), leaf).map(
            lambda kv: ({**base, "parameters": {**base["parameters"], kv[0]: kv[1]}}, "unknown parameter")),
        not_text.map(lambda v: ({**base, "inputs": v}, "inputs neither a text nor a list")),
        blank.map(lambda v: ({**base, "inputs": v}, "a blank input")),
        st.tuples(st.lists(text.filter(str.strip), max_size=2), not_text | blank).map(
            lambda p: ({**base, "inputs": [*p[0], p[1]]}, "an input that is not a text")),
        (leaf.filter(lambda v: v is not None and not isinstance(v, dict))).map(
            lambda v: ({**base, "parameters": v}, "parameters not an object")),
        leaf.filter(lambda v: not isinstance(v, bool)).map(lambda v: ({**base, "stream": v}, "stream not a boolean")),
        st.tuples(st.sampled_from(params), never_a_parameter).map(
            lambda kv: ({**base, "parameters": {**base["parameters"], kv[0]: kv[1]}}, "a parameter no task takes")),
        st.just(({**base, "inputs": [], }, "no inputs")),
    ]
    if task != "generation":
        defects.append(st.just(({"messages": [{"role": "user", "content": "hi"}]}, "messages to a model without chat")))
    else:
        defects.append(st.lists(st.fixed_dictionaries({"role": text.filter(lambda r: r not in ROLES), "content": text}),
                                min_size=1, max_size=2).map(lambda m: ({"messages": m, "parameters": {"max_new_tokens": 1}},
                                                                       "a message of an unknown role")))
    return st.one_of(defects)


def test_bodies_with_a_defect_get_400_never_200(worker):
    task, local = worker

    @settings(max_examples=EXAMPLES // 2, suppress_health_check=list(HealthCheck))
    @given(defect=malformed(task))
    def run(defect):
        body, what = defect
        answer, good = local.predict([body, GOOD])
        assert answer.status == 400, (what, body, answer)
        assert answer.body["message"] and good.status == 200, (what, answer)

    run()


# Each was a 500 "Worker died." on a real server before status phrases were made ASCII:
# the first three by hand (issue 15), the rest from the generated bodies' grammar.
REGRESSIONS = [
    # (body, what the error message quotes: one string, or one per task)
    ({"inputs": "a", "parameters": {"normalize": "é"}}, {"embedding": "got 'é'", None: "unknown key 'normalize'"}),
    ({"inputs": "a", "paramètres": 1}, "unknown key 'paramètres'"),
    ({"stream": "🙂"}, "got '🙂'"),
    ({"inputs": "a", "parameters": {"truncate": "\u2028"}}, "got '\\u2028'"),
    ({"inputs": "a", "parameters": {"ünïcode": 1}}, "unknown key 'ünïcode'"),
    ({"messages": [{"role": "ǘser", "content": "hi"}]}, "got 'ǘser'"),
    ({"inputs": "a", "\r\n": 1}, "unknown key '\\r\\n'"),
    ({"inputs": "a", "\ud800": 1}, "unknown key '\\ud800'"),
]


@pytest.mark.parametrize("body, quoted", REGRESSIONS, ids=range(len(REGRESSIONS)))
def test_regressions_answer_4xx_quoting_the_value(worker, body, quoted):
    task, local = worker
    answer, good = local.predict([body, GOOD])
    assert answer.status == 400 and good.status == 200, answer
    assert answer.phrase.isascii() and answer.phrase.isprintable(), answer.phrase
    if isinstance(quoted, dict):
        quoted = quoted.get(task, quoted[None])
    assert quoted in answer.body["message"], answer.body
