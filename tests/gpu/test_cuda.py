"""The tasks on a CUDA device, against the same task on the CPU (skipped without CUDA).

bench/gpu.sh runs these first on a machine with an NVIDIA GPU. They need torch, transformers
and tokenizers only (no TorchServe, no model packages): the models are tiny, random and
saved here with a word-level tokenizer built here, so they run on a bare GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from handlers.config import HandlerConfig
from handlers.device import pick_device
from handlers.payload import Payload
from handlers.protocols.hf import HF

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

WORDS = "the a model server request batch token worker queue latency memory vector sentence search query answer".split()
TEXTS = ["the model answers the query", "a", "search the vector memory of the server " * 6, "token worker queue"]


def save_tokenizer(folder) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]", eos_token="[SEP]", model_max_length=128).save_pretrained(folder)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=4 + len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=128)).save_pretrained(folder)
    save_tokenizer(folder)
    return str(folder)


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=4 + len(WORDS), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
                                 bos_token_id=2, eos_token_id=3, pad_token_id=0)).save_pretrained(folder)
    save_tokenizer(folder)
    return str(folder)


def run(task, payload: Payload) -> list:
    """One request through the task as the handler runs it: parse, collate, forward, results."""
    item = task.parse(payload)
    return task.results(item, task.forward(task.collate([item])))


def test_the_worker_gets_the_gpu_torchserve_assigned():
    assert pick_device(0) == torch.device("cuda:0")
    assert pick_device(None) == torch.device("cpu")


@pytest.mark.parametrize("dtype, cosine", [("float32", 0.99999), ("float16", 0.999), ("bfloat16", 0.99)])
def test_embeddings_on_cuda_match_the_cpu(encoder_dir, dtype, cosine):
    from handlers.tasks.embedding import EmbeddingTask

    vectors = {}
    for device, kind in ((torch.device("cpu"), "float32"), (torch.device("cuda:0"), dtype)):
        task = EmbeddingTask()
        task.load(encoder_dir, HandlerConfig(task="embedding", dtype=kind, max_batch_tokens=64), device)
        assert next(task.model.parameters()).device.type == device.type
        vectors[device.type] = torch.tensor([r.vector for r in run(task, Payload(inputs=TEXTS, single=False, wire=HF()))])
    similarity = torch.nn.functional.cosine_similarity(vectors["cpu"], vectors["cuda"], dim=-1)
    assert similarity.min() >= cosine, similarity


def test_the_onnx_engine_uses_the_cuda_provider_when_installed(encoder_dir, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)")
    from handlers.engines.ort import OrtEngine
    from transerve.build.prepare import prepare_onnx
    from transerve.build.spec import load_spec

    spec = tmp_path / "tiny" / "model.yaml"
    spec.parent.mkdir()
    spec.write_text(f"name: tiny\ntask: embedding\nsource: {{dir: {encoder_dir}}}\nhandler: {{engine: onnxruntime}}\n"
                    "versions: {'1.0': {}}\n")
    mv = load_spec(spec).version("1.0")
    folder = prepare_onnx(mv.source_dir(), mv, tmp_path / "cache", lambda line: None)
    engine = OrtEngine(str(folder), mv.handler, torch.device("cuda:0"))
    assert engine.name == "onnxruntime (CUDAExecutionProvider)"
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]], device="cuda:0")
    on_gpu = engine(ids, (ids != 0).long())
    on_cpu = OrtEngine(str(folder), mv.handler, torch.device("cpu"))(ids.cpu(), (ids != 0).long().cpu())
    assert on_gpu.device.type == "cuda" and torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)


def test_greedy_generation_on_cuda_is_the_cpus(decoder_dir):
    from handlers.tasks.generation import GenerationTask

    texts = {}
    for device in (torch.device("cpu"), torch.device("cuda:0")):
        task = GenerationTask()
        task.load(decoder_dir, HandlerConfig(task="generation"), device)
        payload = Payload(inputs=["the model answers", "a query"], single=False, wire=HF(), parameters={"max_new_tokens": 12, "do_sample": False})
        texts[device.type] = [(r.text, r.generated_tokens) for r in run(task, payload)]
    assert texts["cuda"] == texts["cpu"] and all(n > 0 for _, n in texts["cpu"])
