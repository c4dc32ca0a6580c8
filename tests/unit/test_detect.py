"""The task from the model's own files: config.json's architectures, a sentence-transformers folder."""

from __future__ import annotations

import json

import pytest

from transerve.build.detect import DetectError, detect
from transerve.build.spec import SpecError, load_spec


def folder(tmp_path, architectures=None, files=None):
    path = tmp_path / "model"
    path.mkdir(parents=True, exist_ok=True)
    if architectures is not None:
        (path / "config.json").write_text(json.dumps({"architectures": architectures}))
    for name, content in (files or {}).items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("architecture, task", [
    ("BertForSequenceClassification", "classification"),
    ("XLMRobertaForSequenceClassification", "classification"),
    ("DistilBertForTokenClassification", "token_classification"),
    ("LlamaForCausalLM", "generation"),
    ("Qwen2ForCausalLM", "generation"),
    ("GPT2LMHeadModel", "generation"),
    ("BertModel", "embedding"),
])
def test_the_head_names_the_task(tmp_path, architecture, task):
    found = detect(folder(tmp_path, [architecture]))
    assert found.task == task and architecture in found.why
    assert found.handler == ({"pooling": "mean"} if task == "embedding" else {})


def test_a_head_wins_over_a_bare_encoder_listed_first(tmp_path):
    assert detect(folder(tmp_path, ["BertModel", "BertForTokenClassification"])).task == "token_classification"


MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]


@pytest.mark.parametrize("pooling, expected", [
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "cls"),  # the layout most models have
    ({"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}, "mean"),
    ({"pooling_mode": "cls", "include_prompt": True}, "cls"),  # what sentence-transformers 6 saves
    ({"pooling_mode": "mean"}, "mean"),
])
def test_a_sentence_transformers_folder_says_pooling_normalize_and_length(tmp_path, pooling, expected):
    found = detect(folder(tmp_path, ["BertModel"], {"modules.json": MODULES, "1_Pooling/config.json": pooling,
                                                    "sentence_bert_config.json": {"max_seq_length": 200}}))
    assert found.task == "embedding" and "modules.json" in found.why
    assert found.handler == {"pooling": expected, "normalize": True, "max_length": 200}
    without_normalize = folder(tmp_path / "other", ["BertModel"], {"modules.json": MODULES[:2], "1_Pooling/config.json": pooling})
    assert detect(without_normalize).handler == {"pooling": expected, "normalize": False}


@pytest.mark.parametrize("files, expected", [
    ({"modules.json": MODULES, "1_Pooling/config.json": {"pooling_mode_max_tokens": True}},
     r"1_Pooling/config\.json: pooling pooling_mode_max_tokens; transerve pools with mean or cls"),
    ({"modules.json": MODULES, "1_Pooling/config.json": {"pooling_mode": "lasttoken"}}, r"pooling lasttoken; transerve pools"),
    ({"modules.json": MODULES + [{"idx": 3, "path": "3_Dense", "type": "sentence_transformers.models.Dense"}],
      "1_Pooling/config.json": {"pooling_mode": "cls"}},
     r"modules\.json: the stages Dense are not run by transerve's embedding task"),
    ({"modules.json": [{**MODULES[0], "path": "0_Transformer"}] + MODULES[1:]},
     r"the transformer is in the subfolder '0_Transformer'; point source at that folder"),
    ({"modules.json": "[not json"}, r"modules\.json: not valid JSON"),
])
def test_sentence_transformers_folders_transerve_cannot_serve_say_why(tmp_path, files, expected):
    with pytest.raises(DetectError, match=expected):
        detect(folder(tmp_path, ["BertModel"], files))


@pytest.mark.parametrize("architectures, expected", [
    (None, r"it has no config\.json"),
    ([], r"config\.json has no architectures"),
    (["T5ForConditionalGeneration"], r"config\.json has architectures \['T5ForConditionalGeneration'\]"),
])
def test_an_unknown_model_fails_listing_the_tasks_and_how_to_set_one(tmp_path, architectures, expected):
    with pytest.raises(DetectError, match=expected + r"; set the task yourself: `task:` in the spec, or --task for "
                                                     r"transerve init \(one of: embedding, classification, "
                                                     r"token_classification, generation\)"):
        detect(folder(tmp_path, architectures))


def test_a_gguf_file_is_a_causal_lm(tmp_path):
    assert detect(folder(tmp_path), gguf="x.gguf").task == "generation"


def write_spec(tmp_path, text):
    (tmp_path / "m").mkdir(exist_ok=True)
    path = tmp_path / "m" / "model.yaml"
    path.write_text(f"name: m\nsource: {{dir: ../model}}\nversions: {{'1.0': {{}}}}\n{text}")
    return path


def test_a_spec_without_a_task_takes_the_models(tmp_path):
    folder(tmp_path, ["BertModel"], {"modules.json": MODULES, "1_Pooling/config.json": {"pooling_mode": "cls"}})
    mv = load_spec(write_spec(tmp_path, "")).version()
    assert (mv.task, mv.handler.task, mv.handler.pooling, mv.handler.normalize) == ("embedding", "embedding", "cls", True)
    # the spec's own keys win over what the folder implies
    assert load_spec(write_spec(tmp_path, "handler: {pooling: mean}\n")).version().handler.pooling == "mean"
    # a spec that names the task gets the folder's settings as defaults too
    assert load_spec(write_spec(tmp_path, "task: embedding\n")).version().handler.pooling == "cls"


def test_a_spec_without_a_task_for_a_model_that_does_not_say_fails_with_how_to_set_one(tmp_path):
    folder(tmp_path, ["T5ForConditionalGeneration"])
    path = write_spec(tmp_path, "")
    with pytest.raises(SpecError, match=rf"{path}: versions\.1\.0: task: cannot tell the task of .*; set the task yourself"):
        load_spec(path)
    assert load_spec(write_spec(tmp_path, "task: generation\n")).version().task == "generation"


def test_a_task_inside_handler_of_a_spec_without_one_is_moved_to_the_top(tmp_path):
    folder(tmp_path, ["BertForTokenClassification"])
    path = write_spec(tmp_path, "handler: {task: classification}\n")
    with pytest.raises(SpecError, match=rf"^{path}: handler\.task: the task is set once, by a top-level `task:` key "
                                        r"\(left out, it is read from the model's files, which say token_classification\); "
                                        r"move `task: classification` to the top$"):
        load_spec(path)
