"""The GPU benchmark that bench/gpu.sh runs: embeddings and generation on one CUDA device.

    bash bench/gpu.sh              # CUDA tests, then this; or: python3 bench/gpu.py [--quick]

- embeddings: all-MiniLM-L6-v2 (the minilm-embed spec's files when installed, else a model of
  the same architecture with random weights, said so in the results) in float32, float16 and
  bfloat16 with torch, and on ONNX Runtime's CUDA provider when the installed onnxruntime has
  it; short (~20 tokens) and long (~200 tokens) inputs at batch sizes 1 to 256, inputs/s, and
  cosine of each to float32 torch;
- generation: SmolLM2-135M (the prepared smollm2-chat files when present, else random weights
  of its architecture) with `model.generate`, 64 new tokens (end-of-text ignored) for 1 and a
  static batch of 16 prompts, float32 and bfloat16, tokens/s.
Results: bench/results/gpu-embeddings.json and gpu-generation.json (and $OUT when set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

RESULTS = REPO / "bench" / "results"
# all-MiniLM-L6-v2's and SmolLM2-135M-Instruct's architectures, for machines without their files.
MINILM = dict(model_type="bert", vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
              intermediate_size=1536, max_position_embeddings=512)
SMOLLM2 = dict(model_type="llama", vocab_size=49152, hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, intermediate_size=1536, max_position_embeddings=8192, tie_word_embeddings=True,
               rope_theta=100000.0, bos_token_id=1, eos_token_id=2)
DTYPES = ("float32", "float16", "bfloat16")
DEVICE = torch.device("cuda:0")  # --device cpu tries the script without a GPU (nothing to report)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def spec_dir(name: str, version: str) -> Path | None:
    """The model files a spec's version archives, where they can be had on this machine."""
    try:
        from transerve.build.prepare import model_dir
        from transerve.build.spec import find_spec

        return model_dir(find_spec(name).version(version), log=lambda line: print(f"  {line}", flush=True))
    except Exception as e:  # a bare GPU machine: no model package, no gguf converter
        print(f"  {name} {version}: its files are not here ({type(e).__name__}: {str(e)[:120]}); random weights", flush=True)
        return None


def load(auto, folder: Path | None, arch: dict, dtype: str):
    from transformers import AutoConfig

    if folder is not None:
        return auto.from_pretrained(folder, dtype=getattr(torch, dtype)).to(DEVICE).eval()
    torch.manual_seed(0)
    config = AutoConfig.for_model(**arch)
    return auto.from_config(config, dtype=getattr(torch, dtype)).to(DEVICE).eval()


def ids_for(rows: int, tokens: int, vocab: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, vocab, (rows, tokens), generator=g)
    mask = torch.ones_like(ids)
    mask[1::3, tokens // 2:] = 0  # a third of the rows padded to half: the mask matters
    return ids.to(DEVICE), mask.to(DEVICE)


def timed(fn, seconds: float) -> float:
    """Calls per second of fn (which synchronizes), after a warm-up."""
    fn()
    fn()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        done += 1
    return done / (time.perf_counter() - started)


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    w = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize(((hidden * w).sum(1) / w.sum(1)).float(), dim=-1)


def embeddings(quick: bool) -> dict:
    from transformers import AutoModel

    folder = spec_dir("minilm-embed", "1.0")
    out = {"weights": str(folder) if folder else "random (all-MiniLM-L6-v2's architecture)", "inputs_per_s": {}, "cosine_to_float32": {}}
    seconds = 0.5 if quick else 1.5
    shapes = {"short": 20, "long": 200}
    batches = (1, 32, 256) if quick else (1, 8, 32, 64, 128, 256)
    probe = {label: ids_for(64, tokens, MINILM["vocab_size"], 7) for label, tokens in shapes.items()}
    reference = {}
    runners = {}
    for dtype in DTYPES:
        model = load(AutoModel, folder, MINILM, dtype)

        def run(ids, mask, model=model):
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=mask).last_hidden_state

        runners[f"torch {dtype}"] = run
    onnx = onnx_runner(folder)
    if onnx is not None:
        runners[f"onnxruntime {'CUDA' if DEVICE.type == 'cuda' else 'CPU'} float32"] = onnx
    else:
        out["onnxruntime"] = "not measured: the installed onnxruntime has no CUDA provider, or the export failed (see the log)"
    for name, run in runners.items():
        out["inputs_per_s"][name], out["cosine_to_float32"][name] = {}, {}
        for label, tokens in shapes.items():
            pooled = pool(run(*probe[label]), probe[label][1])
            reference.setdefault(label, pooled)
            out["cosine_to_float32"][name][label] = round(float((pooled * reference[label]).sum(-1).min()), 7)
            for rows in batches:
                ids, mask = ids_for(rows, tokens, MINILM["vocab_size"], rows)

                def call(ids=ids, mask=mask, run=run):
                    run(ids, mask)
                    sync()

                out["inputs_per_s"][name][f"{label} x{rows}"] = round(rows * timed(call, seconds), 1)
            rates = {k: v for k, v in out["inputs_per_s"][name].items() if k.startswith(label)}
            print(f"  {name:26} {rates}  cosine {out['cosine_to_float32'][name][label]}", flush=True)
    return out


def onnx_runner(folder: Path | None):
    """ONNX Runtime's CUDA provider on the graph transerve.build.prepare exports (and proves), or None."""
    try:
        import onnxruntime
    except ImportError:
        print("  onnxruntime: not installed", flush=True)
        return None
    if DEVICE.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        print(f"  onnxruntime {onnxruntime.__version__}: no CUDA provider ({onnxruntime.get_available_providers()})", flush=True)
        return None
    try:
        from transerve.build.prepare import prepare_onnx
        from transerve.build.spec import find_spec

        mv = find_spec("minilm-embed").version("2.0")
        graph_dir = prepare_onnx(folder, mv, log=lambda line: print(f"  {line}", flush=True)) if folder else None
    except Exception as e:
        print(f"  onnxruntime: the export failed ({type(e).__name__}: {str(e)[:200]})", flush=True)
        return None
    if graph_dir is None:
        print("  onnxruntime: no model files to export (random weights are not exported)", flush=True)
        return None
    from handlers.engines.ort import OrtEngine

    engine = OrtEngine(str(graph_dir), mv.handler, DEVICE)
    print(f"  {engine.name}", flush=True)
    return lambda ids, mask: engine(ids, mask)


def generation(quick: bool) -> dict:
    from transformers import AutoModelForCausalLM

    folder = spec_dir("smollm2-chat", "1.0")
    out = {"weights": str(folder) if folder else "random (SmolLM2-135M's architecture)", "new_tokens": 64, "tokens_per_s": {}}
    for dtype in ("float32", "bfloat16"):
        model = load(AutoModelForCausalLM, folder, SMOLLM2, dtype)
        out["tokens_per_s"][dtype] = {}
        for streams in (1, 16):
            ids, _ = ids_for(streams, 48, SMOLLM2["vocab_size"], streams)
            mask = torch.ones_like(ids)

            def call(model=model, ids=ids, mask=mask):
                with torch.inference_mode():
                    model.generate(ids, attention_mask=mask, max_new_tokens=64, min_new_tokens=64, do_sample=False,
                                   pad_token_id=0)
                sync()

            rate = timed(call, 1.0 if quick else 4.0)
            out["tokens_per_s"][dtype][f"{streams} streams"] = round(rate * streams * 64, 1)
        print(f"  generation {dtype}: {out['tokens_per_s'][dtype]} tokens/s", flush=True)
        del model
        if DEVICE.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    top.add_argument("--quick", action="store_true")
    top.add_argument("--out", default=str(RESULTS))
    top.add_argument("--device", default="cuda:0", help="cpu: try the script here (with --quick); its figures mean nothing")
    args = top.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA device here; nothing measured", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import transformers

    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine(),
            "gpu": torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"none ({DEVICE})",
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__}
    print(f"gpu: {meta}", flush=True)
    for name, measure in (("embeddings", embeddings), ("generation", generation)):
        started = time.perf_counter()
        print(f"{name} ...", flush=True)
        result = {"meta": {**meta, "seconds": None}, **measure(args.quick)}
        result["meta"]["seconds"] = round(time.perf_counter() - started, 1)
        path = out / f"gpu-{name}.json"
        path.write_text(json.dumps(result, indent=2) + "\n")
        if os.environ.get("OUT"):  # the lent machine's folder that comes back
            shutil.copy2(path, Path(os.environ["OUT"]) / path.name)
        print(f"  -> {path} ({result['meta']['seconds']} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
