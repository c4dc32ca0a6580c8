"""Request bodies -> Payload, or an InputError with the status and a message that says what to fix."""

from __future__ import annotations

import pytest

from handlers.payload import InputError
from handlers.protocols.hf import decode


def body(value):
    return {"body": value}


@pytest.mark.parametrize(
    "value, inputs, single, parameters",
    [
        ({"inputs": "one"}, ["one"], True, {}),
        ({"inputs": ["a", "b"], "parameters": {"normalize": False}}, ["a", "b"], False, {"normalize": False}),
        ("plain text body", ["plain text body"], True, {}),
        (b"raw bytes text", ["raw bytes text"], True, {}),
        (b'{"inputs": ["from bytes"]}', ["from bytes"], False, {}),
        (bytearray("ünïcode".encode()), ["ünïcode"], True, {}),
        ({"inputs": "x", "parameters": None}, ["x"], True, {}),
    ],
)
def test_good_bodies_decode(value, inputs, single, parameters):
    payload = decode(body(value), max_inputs=4, max_chars=100)
    assert (payload.inputs, payload.single, payload.parameters) == (inputs, single, parameters)


@pytest.mark.parametrize(
    "value, status, message",
    [
        (b"\xff\xfe\x00", 400, "not valid UTF-8"),
        (b'{"inputs": ', 400, "not valid JSON"),
        ([1, 2], 400, "JSON object or plain text, got a JSON list"),
        (42, 400, "got a JSON int"),
        ({"text": "x"}, 400, "unknown key 'text'"),
        ({"parameters": {}}, 400, "has no 'inputs'"),
        ({"inputs": 3}, 400, "'inputs' must be a string or a list of strings, got int"),
        ({"inputs": []}, 400, "empty list"),
        ({"inputs": ["ok", 7]}, 400, r"inputs\[1\] must be a string, got int"),
        ({"inputs": ["ok", "  "]}, 400, r"inputs\[1\] is empty"),
        ({"inputs": ""}, 400, r"inputs\[0\] is empty"),
        ({"inputs": "x", "parameters": [1]}, 400, "'parameters' must be an object"),
        ({"inputs": ["a"] * 5}, 413, "5 inputs in one request; the limit is 4"),
        ({"inputs": "y" * 101}, 413, r"101 characters; the limit is 100"),
        ("z" * 101, 413, r"the limit is 100"),
        ({"inputs": "x", "stream": "yes"}, 400, "'stream' must be true or false"),
        ({"inputs": "x", "messages": [{"role": "user", "content": "x"}]}, 400, "either 'inputs' or 'messages'"),
        ({"messages": []}, 400, "'messages' must be a non-empty list"),
        ({"messages": "hi"}, 400, "'messages' must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, 400, r"messages\[0\] must be an object with exactly 'role' and 'content'"),
        ({"messages": [{"role": "robot", "content": "x"}]}, 400, r"messages\[0\].role must be one of system, user, assistant"),
        ({"messages": [{"role": "user", "content": 5}]}, 400, r"messages\[0\].content must be a string"),
        ({"messages": [{"role": "user", "content": "x"}] * 5}, 413, "5 messages in one request; the limit is 4"),
        ({"messages": [{"role": "user", "content": "y" * 60}, {"role": "user", "content": "y" * 60}]}, 413, "120 characters in all"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}, 400, "the last message is the assistant's"),
        ({"instances": "x"}, 400, "'instances' must be a list of strings, got str"),
        ({"instances": []}, 400, "'instances' is an empty list"),
        ({"instances": ["ok", {"text": "x"}]}, 400, r"instances\[1\] must be a string, got dict"),
        ({"instances": ["a"] * 5}, 413, "5 instances in one request; the limit is 4"),
        ({"instances": ["a"], "inputs": ["b"]}, 400, "either 'inputs' or 'instances'"),
        ({"instances": ["a"], "stream": True}, 400, "'stream' is not part of KServe's V1 protocol"),
    ],
)
def test_bad_bodies_raise_input_error(value, status, message):
    with pytest.raises(InputError, match=message) as caught:
        decode(body(value), max_inputs=4, max_chars=100)
    assert caught.value.status == status


def test_messages_and_stream_decode():
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    payload = decode(body({"messages": chat, "stream": True, "parameters": {"seed": 1}}), max_inputs=4, max_chars=100)
    assert (payload.messages, payload.stream, payload.inputs, payload.parameters) == (chat, True, [], {"seed": 1})
    assert decode(body({"inputs": "x"}), max_inputs=4, max_chars=100).stream is False


def test_a_form_encoded_body_gets_415_saying_how_to_send_it():
    with pytest.raises(InputError, match="arrived as HTML form fields \\('hello'\\).*Content-Type: text/plain") as caught:
        decode({"hello": ""}, max_inputs=4, max_chars=100)
    assert caught.value.status == 415


def test_kserve_v1_instances_decode_as_inputs():
    payload = decode(body({"instances": ["a", "b"], "parameters": {"top_k": 2}}), max_inputs=4, max_chars=100)
    assert (payload.inputs, payload.single, payload.parameters, payload.wire.name) == (["a", "b"], False, {"top_k": 2}, "kserve_v1")
    assert decode(body({"inputs": ["a"]}), max_inputs=4, max_chars=100).wire.name == "hf"
