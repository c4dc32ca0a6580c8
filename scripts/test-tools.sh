#!/usr/bin/env bash
# What the tests need beyond .venv: Prometheus (Debian's package), the real scraper the
# metrics tests start on a free port; promtool comes with it.
set -euo pipefail
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    echo "test-tools: Prometheus not found; installing Debian's prometheus package"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
echo "test-tools: $(prometheus --version 2>&1 | head -1)"
