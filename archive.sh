#!/usr/bin/env bash
# Build model_store/NAME-VERSION.mar from models/NAME/model.yaml: ./archive.sh NAME [VERSION|all]
set -euo pipefail
cd "$(dirname "$0")"
[ $# -ge 1 ] || { echo "usage: ./archive.sh NAME [VERSION|all]" >&2; exit 2; }
[ -x .venv/bin/transerve ] || make setup
exec .venv/bin/transerve archive "$@"
