#!/usr/bin/env bash
# The container's entrypoint (Dockerfile): TorchServe in the foreground with the image's
# config, serving the archives named by TRANSERVE_MODELS (NAME[:VERSION],...) from
# TRANSERVE_MODEL_STORE. SIGTERM (docker stop, a pod's deletion) stops it and its workers.
# With arguments it runs them instead, e.g. `docker run IMAGE transerve status`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if [ "$#" -gt 0 ]; then
    exec "$@"
fi
: "${TRANSERVE_MODELS:?set TRANSERVE_MODELS to the models to serve, e.g. minilm-embed,smollm2-chat}"
: "${TRANSERVE_CONFIG:=$PWD/deploy/docker/config.properties}"
export TRANSERVE_CONFIG
mkdir -p "${TRANSERVE_RUN_DIR:=$HOME/run}"
export TRANSERVE_RUN_DIR
exec transerve run
