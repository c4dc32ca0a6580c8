"""The GGUF conversion (2.0's safetensors, transerve/build/prepare.py) proves what it keeps: a converter
that changed one tensor on its way to disk, by an amount too small to move a greedy token, is
refused naming the tensor, and nothing is kept; and the served model generates what
transformers' own GGUF loader generates from the shipped file (not only what the converted
folder does)."""

from __future__ import annotations

import pytest
import torch

from transerve.build import prepare
from transerve.build.spec import find_spec


@pytest.fixture(scope="module")
def gguf():
    mv = find_spec("smollm2-chat").version("2.0")
    return mv.source_dir() / mv.source.gguf


def test_a_conversion_that_changed_one_tensor_is_refused(gguf, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    save = PreTrainedModel.save_pretrained

    def save_changed(self, *args, **kwargs):
        with torch.no_grad():
            self.model.layers[7].mlp.down_proj.weight[3, 5] += 1e-4  # a converter's slip
        return save(self, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_changed)
    with pytest.raises(prepare.PrepareError, match=r"differ from the GGUF's in 1 tensors \(model\.layers\.7\.mlp\.down_proj\.weight\)"):
        prepare.prepare_gguf(gguf, tmp_path / "cache", log=lambda _: None)
    assert not (tmp_path / "cache" / gguf.stem).exists()
    assert not list((tmp_path / "cache").glob(".*.tmp"))


def test_the_served_model_generates_what_transformers_gguf_loader_does(gguf, chat_static):
    """The reference here is transformers reading the shipped GGUF itself (dequantizing it in
    memory), not the safetensors folder the archive was built from."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    for prompt in ["The capital of France is", "Write a haiku about the sea.\n"]:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            expected = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False)
        [answer] = chat_static.predict([{"inputs": prompt, "parameters": {"max_new_tokens": 20}}])
        assert answer.status == 200
        assert answer.body["generated_text"] == tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
