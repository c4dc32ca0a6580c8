"""Container health probe: exit 0 when TorchServe answers, 1 when it does not.

    python -m transerve.torchserve.health [--run-dir DIR] [--model NAME]

Without --model it asks /ping (liveness: the frontend is up and its workers are not all
dead); with --model it asks the management API whether the model's default version has
a READY worker (readiness). The keys and addresses are read from the run directory that
`transerve run` (or `serve`) started TorchServe from, so it works with token
authorization on, where an HTTP probe without a key would be refused. It imports no torch:
a probe runs every few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from transerve.torchserve.rundir import RunDir


def _local(address: str) -> str:
    """An address to call from inside the container: a wildcard bind is reached on loopback."""
    return address.replace("://0.0.0.0:", "://127.0.0.1:").replace("://[::]:", "://127.0.0.1:")


def _get(url: str, key: str | None, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(run_dir: Path, model: str | None = None, timeout: float = 5) -> tuple[bool, str]:
    """(healthy, what was seen) for the TorchServe started from run_dir."""
    run = RunDir(run_dir)
    try:
        props = run.properties()
    except OSError:
        return False, f"no TorchServe config in {run_dir}: was it started from there?"
    keys = run.keys()
    if props.get("disable_token_authorization") != "true" and not keys:
        return False, f"no keys in {run.key_file} yet: TorchServe is still starting"
    key = keys.get
    try:
        if model is None:
            status, body = _get(f"{_local(props['inference_address'])}/ping", key("inference"), timeout)
            healthy = status == 200 and json.loads(body).get("status") == "Healthy"
            return healthy, f"/ping: {status} {body.decode(errors='replace').strip()}"
        status, body = _get(f"{_local(props['management_address'])}/models/{model}", key("management"), timeout)
        if status != 200:
            return False, f"/models/{model}: {status} {body.decode(errors='replace').strip()}"
        versions = json.loads(body)
        ready = [w for v in versions for w in v.get("workers", []) if w.get("status") == "READY"]
        return bool(ready), f"{model}: {len(ready)} READY worker(s)"
    except (OSError, ValueError, KeyError) as e:
        return False, f"TorchServe did not answer: {e}"


def main(argv: list[str] | None = None) -> int:
    top = argparse.ArgumentParser(prog="python -m transerve.torchserve.health", description=__doc__.split("\n\n")[0])
    default_run_dir = os.environ.get("TRANSERVE_RUN_DIR", str(Path(__file__).resolve().parents[2] / ".transerve"))
    top.add_argument("--run-dir", default=default_run_dir)
    top.add_argument("--model", help="ready only when this model has a READY worker")
    top.add_argument("--timeout", type=float, default=5)
    args = top.parse_args(argv)
    healthy, seen = check(Path(args.run_dir), args.model, args.timeout)
    print(("healthy: " if healthy else "unhealthy: ") + seen)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
