"""The spec loader: valid specs resolve per version; every mistake names file, key and expectation."""

from __future__ import annotations

import textwrap

import pytest

from transerve.build.spec import SpecError, all_specs, load_spec

GOOD = """
    name: tiny
    task: embedding
    source: {dir: ./weights}
    handler: {max_length: 64}
    runtime: {batchSize: 8, maxBatchDelay: 5}
    versions:
      "1.0": {}
      "2.0": {handler: {normalize: false}, runtime: {batchSize: 4}}
"""


def write(tmp_path, text: str):
    folder = tmp_path / "tiny"
    folder.mkdir(exist_ok=True)
    path = folder / "model.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_version_overrides_merge_over_model_settings(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    one, two = spec.version("1.0"), spec.version("2.0")
    assert (one.handler.max_length, one.handler.normalize, one.runtime.batchSize) == (64, True, 8)
    assert (two.handler.max_length, two.handler.normalize, two.runtime.batchSize) == (64, False, 4)
    assert two.runtime.maxBatchDelay == 5
    assert spec.default_version == "2.0"
    assert two.archive_name == "tiny-2.0.mar"
    assert two.model_config()["handler"]["task"] == "embedding"
    assert two.source_dir() == (tmp_path / "tiny" / "weights").resolve()


@pytest.mark.parametrize(
    "change, expected",
    [
        (("handler: {max_length: 64}", "handler: {max_lenght: 64}"), r"handler: unknown key 'max_lenght'; known keys: .*max_length"),
        (("handler: {max_length: 64}", "handler: {max_length: many}"), r"handler\.max_length: expected int or null, got 'many'"),
        (("handler: {max_length: 64}", "handler: {pooling: max}"), r"handler\.pooling: expected 'mean' \| 'cls', got 'max'"),
        (("handler: {max_length: 64}", "handler: {max_length: 0}"), r"handler\.max_length: expected a positive integer, got 0"),
        (("handler: {max_length: 64}", "handler: {max_batch_tokens: 0}"), r"handler\.max_batch_tokens: expected a positive integer, got 0"),
        (("handler: {max_length: 64}", "handler: {quantize: int8, dtype: bfloat16}"),
         r"handler\.quantize: int8 quantization starts from float32 weights; dtype is bfloat16"),
        (("handler: {max_length: 64}", "handler: {quantize: int4}"), r"handler\.quantize: expected 'int8' or null, got 'int4'"),
        (("handler: {max_length: 64}", "handler: {engine: tensorrt}"), r"handler\.engine: expected 'torch' \| 'onnxruntime' \| 'llamacpp', got 'tensorrt'"),
        (("handler: {max_length: 64}", "handler: {engine: llamacpp}"),
         r"handler\.engine: llamacpp runs generation from a GGUF file; this model's task is embedding: remove engine"),
        (("task: embedding\nsource: {dir: ./weights}\nhandler: {max_length: 64}",
          "task: generation\nsource: {dir: ./weights, gguf: m.gguf}\nhandler: {engine: llamacpp, dtype: bfloat16}"),
         r"handler\.dtype: llama\.cpp computes in the GGUF file's own types; dtype is bfloat16: remove dtype"),
        (("task: embedding\nsource: {dir: ./weights}\nhandler: {max_length: 64}",
          "task: generation\nsource: {dir: ./weights, gguf: m.gguf}\nhandler: {engine: llamacpp, quantize: int8}"),
         r"handler\.quantize: a GGUF file carries its own quantization: remove quantize, or set engine: torch"),
        (("task: embedding\nsource: {dir: ./weights}\nhandler: {max_length: 64}",
          "task: generation\nsource: {dir: ./weights}\nhandler: {engine: llamacpp}"),
         r"versions\.1\.0: handler\.engine: llamacpp serves a GGUF file: name it in source\.gguf"),
        (("handler: {max_length: 64}", "handler: {step_budget_ms: 5}"),
         r"handler\.step_budget_ms: a key of the generation task only; this model's task is embedding"),
        (("handler: {max_length: 64}", "handler: {engine: onnxruntime, quantize: int8}"),
         r"handler\.quantize: int8 dynamic quantization is a torch engine option: remove quantize, or set engine: torch"),
        (("handler: {max_length: 64}", "handler: {engine: onnxruntime, dtype: float16}"),
         r"handler\.dtype: the ONNX graph is exported in float32; dtype is float16"),
        (("task: embedding\nsource: {dir: ./weights}\nhandler: {max_length: 64}",
          "task: generation\nsource: {dir: ./weights}\nhandler: {engine: onnxruntime}"),
         r"handler\.engine: onnxruntime runs the encoder tasks \(embedding, classification, token_classification\); generation decodes with torch"),
        (("handler: {max_length: 64}", "handler: {max_length: 64, task: embedding}"),
         r"handler\.task: the task is set once, by the spec's top-level `task: embedding`; remove `task: embedding` from "
         r"this handler section$"),
        (('"2.0": {handler: {normalize: false}, runtime: {batchSize: 4}}', '"2.0": {handler: {task: generation}}'),
         r"versions\.2\.0: handler\.task: .*remove `task: generation` from this handler section \(to serve it as "
         r"generation, set the top-level task to generation\)"),
        (("handler: {max_length: 64}", "handler: {aggregation: first}"),
         r"handler\.aggregation: a key of the token_classification task only; this model's task is embedding: remove it"),
        (("handler: {max_length: 64}", "handler: {max_new_tokens: 9}"),
         r"handler\.max_new_tokens: a key of the generation task only; this model's task is embedding"),
        (("task: embedding", "task: classification"),
         r"versions\.2\.0: handler\.normalize: a key of the embedding task only; this model's task is classification"),
        (("task: embedding\nsource: {dir: ./weights}\nhandler: {max_length: 64}",
          "task: generation\nsource: {dir: ./weights}\nhandler: {max_batch_tokens: 512}"),
         r"handler\.max_batch_tokens: a key of the tasks embedding, classification, token_classification only; "
         r"this model's task is generation"),
        (("source: {dir: ./weights}\n", ""), r"missing required key 'source'"),
        (("source: {dir: ./weights}", "source: {}"), r"source\.package: give exactly one of source\.package, source\.dir or source\.hub"),
        (("task: embedding", "task: translation"), r"handler\.task: unknown task 'translation'; known tasks: embedding, classification"),
        (("runtime: {batchSize: 8, maxBatchDelay: 5}", "runtime: {batchSize: '8'}"), r"runtime\.batchSize: expected int, got '8'"),
        (("runtime: {batchSize: 8, maxBatchDelay: 5}", "runtime: {batchSize: 0}"), r"runtime\.batchSize: expected an integer >= 1, got 0"),
        (("runtime: {batchSize: 8, maxBatchDelay: 5}", "runtime: {minWorkers: 3, maxWorkers: 2}"), r"runtime\.maxWorkers: 2 is below minWorkers 3"),
        (('"2.0": {handler: {normalize: false}, runtime: {batchSize: 4}}', '"2.0": {handler: {normalize: "no"}}'), r"versions\.2\.0: handler\.normalize: expected bool, got 'no'"),
        (('"2.0": {handler: {normalize: false}, runtime: {batchSize: 4}}', '"2.0": {weights: x}'), r"versions\.2\.0: unknown key 'weights'"),
        (('"1.0": {}', "1.0: {}"), r"version 1\.0 must be a quoted string"),
        (("name: tiny", "name: tiny\nflavour: vanilla"), r"unknown key 'flavour'"),
    ],
)
def test_spec_errors_name_file_key_and_expectation(tmp_path, change, expected):
    old, new = change
    text = textwrap.dedent(GOOD)
    assert old in text
    path = write(tmp_path, text.replace(old, new))
    with pytest.raises(SpecError, match=expected) as caught:
        load_spec(path)
    assert str(path) in str(caught.value)


def test_unknown_version_lists_known_ones(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    with pytest.raises(SpecError, match=r"no version '3\.0'; known: 1\.0, 2\.0"):
        spec.version("3.0")


def test_missing_spec_file_and_invalid_yaml(tmp_path):
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "nope" / "model.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(write(tmp_path, "name: [unclosed"))


def test_shipped_specs_are_valid():
    names = [spec.name for spec in all_specs()]
    assert "minilm-embed" in names


def test_a_version_may_bring_its_own_weights_and_samples(tmp_path):
    spec = load_spec(write(tmp_path, GOOD.replace(
        '"1.0": {}',
        '"1.0": {}\n      "1.5": {source: {dir: ./finetuned}, samples: [{request: {inputs: "x"}, expect: {dimensions: 64}}]}',
    ).replace("runtime:", 'samples: [{inputs: ["a", "b"]}]\n    runtime:', 1)))
    base, tuned = spec.version("1.0"), spec.version("1.5")
    assert base.source_dir() == (tmp_path / "tiny" / "weights").resolve()
    assert tuned.source_dir() == (tmp_path / "tiny" / "finetuned").resolve()
    assert [(s.request, s.expect) for s in base.samples] == [({"inputs": ["a", "b"]}, None)]
    assert [(s.request, s.expect) for s in tuned.samples] == [({"inputs": "x"}, {"dimensions": 64})]


def test_a_sample_with_an_unknown_key_is_refused(tmp_path):
    with pytest.raises(SpecError, match=r"samples\[0\]: unknown key 'expected'"):
        load_spec(write(tmp_path, GOOD.replace("runtime:", 'samples: [{request: "x", expected: 1}]\n    runtime:', 1)))


@pytest.mark.parametrize("task, runtime, handler, expected", [
    ("embedding", "{continuousBatching: true, batchSize: 40}", "{}", "only generation decodes step by step"),
    ("generation", "{continuousBatching: true, batchSize: 8}", "{max_running: 4, max_waiting: 4}",
     "runtime.batchSize: 8 must be above handler.max_running + max_waiting (8)"),
    ("generation", "{continuousBatching: true, batchSize: 40}", "{max_waiting: 0}", "max_waiting: expected a positive integer"),
    ("generation", "{continuousBatching: true, batchSize: 40, maxWorkers: 2}", "{}",
     "runtime.maxWorkers: 2; continuous batching runs one worker per version"),
])
def test_continuous_batching_is_refused_where_it_cannot_work(tmp_path, task, runtime, handler, expected):
    text = GOOD.replace("task: embedding", f"task: {task}").replace("runtime: {batchSize: 8, maxBatchDelay: 5}", f"runtime: {runtime}")
    text = text.replace("handler: {max_length: 64}", f"handler: {handler}").replace("{handler: {normalize: false}, runtime: {batchSize: 4}}", "{}")
    with pytest.raises(SpecError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_spec(write(tmp_path, text))


def test_a_continuous_version_writes_its_mode_into_model_config(tmp_path):
    text = GOOD.replace("task: embedding", "task: generation").replace(
        "runtime: {batchSize: 8, maxBatchDelay: 5}", "runtime: {continuousBatching: true, batchSize: 40}").replace(
        "{handler: {normalize: false}, runtime: {batchSize: 4}}", "{}")
    config = load_spec(write(tmp_path, text)).version("2.0").model_config()
    assert config["continuousBatching"] is True and config["batchSize"] == 40
    assert (config["handler"]["max_running"], config["handler"]["max_waiting"]) == (16, 16)
    assert "continuousBatching" not in load_spec(write(tmp_path, GOOD)).version("1.0").model_config()


def test_the_task_keys_table_names_real_keys_and_tasks():
    import dataclasses

    from handlers.config import TASK_KEYS, HandlerConfig
    from handlers.tasks import TASKS

    fields = {f.name for f in dataclasses.fields(HandlerConfig)}
    assert set(TASK_KEYS) <= fields - {"task"} and all(tasks and set(tasks) <= set(TASKS) for tasks in TASK_KEYS.values())
