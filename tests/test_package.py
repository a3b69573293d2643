"""The package: `pip install .` into a clean virtual environment gives a working `thaw` command whose
--version matches the distribution's (thaw-transfer: `thaw` on the package index is another project)."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_distribution_name_and_version_agree():
    import thaw
    from thaw.cli import DISTRIBUTION

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == DISTRIBUTION == "thaw-transfer" and "version" in project["dynamic"]
    done = subprocess.run([sys.executable, "-m", "thaw.cli", "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"thaw {thaw.__version__} (distribution thaw-transfer)"


@pytest.mark.slow
def test_pip_install_into_a_clean_venv_gives_a_working_thaw(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    thaw = venv / "bin" / "thaw"
    version = subprocess.run([str(thaw), "--version"], capture_output=True, text=True, cwd=tmp_path)
    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('thaw-transfer'))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert version.stdout.strip() == f"thaw {installed.stdout.strip()} (distribution thaw-transfer)"
    models = subprocess.run([str(thaw), "models", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert models.returncode == 0 and '"mobilenet_v2"' in models.stdout  # the installed code runs
