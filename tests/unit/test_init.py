"""`transerve init`: a spec written from the model's files, valid as written, never over another."""

from __future__ import annotations

import json

import pytest
import yaml

from transerve import cli
from transerve.build.scaffold import init, settings
from transerve.build.spec import load_spec


def model(tmp_path, architectures, chat=False):
    path = tmp_path / "weights"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"architectures": architectures}))
    (path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"} if chat else {}))
    return path


@pytest.mark.parametrize("architecture, task", [
    ("BertForSequenceClassification", "classification"), ("BertForTokenClassification", "token_classification"),
    ("BertModel", "embedding"), ("LlamaForCausalLM", "generation"),
])
def test_the_written_spec_loads_with_the_models_task_and_a_commented_key_each(tmp_path, architecture, task):
    written = init("my-model", str(model(tmp_path, [architecture])), tmp_path / "models", n_cores=2)
    assert written.path == tmp_path / "models" / "my-model" / "model.yaml" and written.task == task
    mv = load_spec(written.path).version()
    assert (mv.task, mv.version, mv.source_dir()) == (task, "1.0", (tmp_path / "weights").resolve())
    assert mv.samples and (mv.runtime.continuousBatching is True) == (task == "generation")
    text = written.path.read_text()
    assert f"# Task: read from config.json's architectures: {architecture}" in text
    data = yaml.safe_load(text)
    for section in ("handler", "runtime"):
        for key in data[section]:
            line = next(line for line in text.splitlines() if line.startswith(f"  {key}:"))
            assert "# " in line, f"{key} has no comment"


@pytest.mark.parametrize("n_cores", [1, 2, 3, 8, 16, 64])
@pytest.mark.parametrize("task", ["embedding", "classification", "generation"])
def test_workers_times_threads_fit_the_cores(task, n_cores):
    handler, runtime, _ = settings(task, {}, n_cores, chat=False)
    assert 1 <= runtime["maxWorkers"] * handler["threads"] <= n_cores
    assert runtime["minWorkers"] == runtime["maxWorkers"]


def test_a_chat_model_gets_a_messages_sample_and_a_plain_lm_a_prompt(tmp_path):
    chat = init("chat", str(model(tmp_path / "a", ["LlamaForCausalLM"], chat=True)), tmp_path / "models", n_cores=2)
    plain = init("plain", str(model(tmp_path / "b", ["LlamaForCausalLM"])), tmp_path / "models", n_cores=2)
    assert "messages" in load_spec(chat.path).version().samples[0].request
    assert "inputs" in load_spec(plain.path).version().samples[0].request


def test_task_given_overrides_and_is_needed_when_the_model_does_not_say(tmp_path, capsys):
    weights = model(tmp_path, ["T5ForConditionalGeneration"])
    models = tmp_path / "models"
    assert cli.main(["--models-dir", str(models), "init", "t5", "--source", str(weights)]) == cli.BAD_INPUT
    err = capsys.readouterr().err
    assert "cannot tell the task of" in err and "--task for transerve init" in err and not (models / "t5").exists()
    assert cli.main(["--models-dir", str(models), "init", "t5", "--source", str(weights), "--task", "generation"]) == 0
    out = capsys.readouterr().out
    assert "task     generation (given with --task (the model's files do not say))" in out and "transerve archive t5" in out
    assert load_spec(models / "t5" / "model.yaml").version().task == "generation"


def test_init_refuses_to_overwrite_a_bad_name_an_unknown_task_and_a_missing_source(tmp_path, capsys):
    weights, models = model(tmp_path, ["BertModel"]), tmp_path / "models"
    run = lambda *argv: (cli.main(["--models-dir", str(models), "init", *argv]), capsys.readouterr().err)  # noqa: E731
    assert run("e", "--source", str(weights))[0] == 0
    before = (models / "e" / "model.yaml").read_text()
    code, err = run("e", "--source", str(weights), "--task", "classification")
    assert code == 2 and "model.yaml exists; transerve init does not overwrite a spec" in err
    assert (models / "e" / "model.yaml").read_text() == before
    assert "is not a model name" in run("bad/name", "--source", str(weights))[1]
    assert "unknown task 'translation'" in run("x", "--source", str(weights), "--task", "translation")[1]
    assert "nowhere is neither a folder nor a Hub id (ORG/NAME)" in run("x", "--source", "nowhere")[1]
    assert "--revision pins a Hub source" in run("x", "--source", str(weights), "--revision", "main")[1]
    assert sorted(p.name for p in models.iterdir()) == ["e"]


def test_a_folder_with_pickle_weights_only_gets_a_note_before_the_archive_refuses_it(tmp_path, capsys):
    weights = model(tmp_path, ["BertForSequenceClassification"])
    (weights / "pytorch_model.bin").write_bytes(b"pickle")
    assert cli.main(["--models-dir", str(tmp_path / "models"), "init", "p", "--source", str(weights)]) == 0
    out = capsys.readouterr().out
    assert f"note: no *.safetensors weights in {weights} (it has pytorch_model.bin: pickles, which the archive refuses " \
           "unless handler.allow_pickle: true" in out


def test_the_task_from_any_architectures_is_a_known_task_or_a_clear_refusal(tmp_path):
    from hypothesis import given
    from hypothesis import strategies as st

    from handlers.tasks import TASKS
    from transerve.build.detect import DetectError, detect

    names = st.one_of(st.text(max_size=40), st.sampled_from(["BertModel", "GPT2LMHeadModel", "XForCausalLM", "ForTokenClassification"]))

    @given(st.lists(names, max_size=4))
    def check(architectures):
        folder = model(tmp_path, architectures)
        try:
            found = detect(folder)
        except DetectError as e:
            assert "set the task yourself" in str(e)
        else:
            assert found.task in TASKS and found.why

    check()
