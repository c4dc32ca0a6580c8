#!/usr/bin/env bash
# transerve on a machine with an NVIDIA GPU, in one go and without interaction (about 5 minutes):
#   1. the CUDA tests (tests/gpu: the tasks on the GPU against the CPU, fp32/fp16/bf16, greedy
#      generation, ONNX Runtime's CUDA provider when installed);
#   2. bench/gpu.py: embeddings (fp32/fp16/bf16 torch, ONNX Runtime CUDA when installed) and
#      generation at 1 and 16 streams, results in bench/results/gpu-*.json (and $OUT when set).
# Uses .venv/bin/python when it sees the GPU, else python3 (a GPU image's own torch and
# transformers: the tests and the benchmark need no TorchServe, and fall back to random weights
# of the default models' architectures where the model packages are not installed).
# Exits non-zero when there is no GPU or a test fails; the benchmark still runs after a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false

PY=""
for candidate in .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        PY="$candidate"; break
    fi
done
if [ -z "$PY" ]; then
    echo "gpu.sh: no Python here whose torch sees a CUDA device; nothing run" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, transformers; print(f"gpu.sh: {torch.cuda.get_device_name(0)}, torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}")'
"$PY" -m pip install -q --no-deps --no-index pyyaml >/dev/null 2>&1 || true  # already there on a GPU image; never fetched

status=0
echo "== CUDA tests (tests/gpu)"
log="${OUT:-/tmp}/gpu-tests.log"
timeout 240 "$PY" -m pytest -q -p no:cacheprovider -p no:logging --noconftest -rs tests/gpu >"$log" 2>&1 || status=1
tail -n 40 "$log"
echo "== benchmark (bench/gpu.py)"
timeout 300 "$PY" bench/gpu.py "$@" || status=1
exit $status
