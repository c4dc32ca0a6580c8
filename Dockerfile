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
FROM ${BASE_IMAGE}

# Where pip finds torch; the CPU wheels are a fraction of the CUDA ones' size.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Archives built into the image's model store; empty builds none (mount a store instead).
ARG MODELS="minilm-embed smollm2-chat"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TRANSERVE_MODEL_STORE=/opt/transerve/model_store \
    TRANSERVE_CONFIG=/opt/transerve/deploy/docker/config.properties \
    TRANSERVE_RUN_DIR=/home/transerve/run \
    TRANSERVE_MODELS=minilm-embed,smollm2-chat

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# A CUDA base image has no Python with venv; the slim Python image has both. Versions
# are the base image's own, so they are not pinned here.
# hadolint ignore=DL3008
RUN if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

WORKDIR /opt/transerve

# Dependencies first (a layer that survives code changes): the install script and what
# it reads, then the code. The editable install finds the packages' code when it lands.
COPY pyproject.toml README.md ./
COPY scripts/setup.sh scripts/
COPY transerve/__init__.py transerve/
COPY handlers/__init__.py handlers/
RUN PIP_EXTRA_INDEX_URL="${TORCH_INDEX_URL}" TRANSERVE_EXTRAS=models bash scripts/setup.sh \
    && rm -rf /var/lib/apt/lists/* /root/.cache

COPY . .
# The archives, built once here; the prepared weights they were built from are not needed
# at run time (the archive holds them).
RUN for model in ${MODELS}; do .venv/bin/transerve archive "${model}"; done \
    && rm -rf .transerve /root/.cache /tmp/*

RUN groupadd --gid 10001 transerve \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin transerve
USER 10001:10001

# Inference and metrics; management stays on the container's loopback (docker exec).
EXPOSE 8000 8080 8082
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["/opt/transerve/.venv/bin/python", "-m", "transerve.health"]
ENTRYPOINT ["/opt/transerve/scripts/entrypoint.sh"]
