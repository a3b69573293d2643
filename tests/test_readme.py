"""The README: short, its links resolve, and its quickstart snippets run: on tiny generated data in the fast
set, as written (slow: MobileNetV2 with real ImageNet weights on builtin:digits, a minute each). Each
command runs in a process of its own, forked from a preloaded one (tests/zygote.py)."""

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from conftest import make_class_folder
from zygote import run_thaw

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def snippet(marker: str) -> str:
    """The fenced code block that follows the HTML comment ``<!-- marker: ... -->``."""
    found = re.search(rf"<!-- {marker}:[^>]*-->\n```\w+\n(.*?)\n```", README, re.S)
    assert found, f"README.md has no code block after <!-- {marker}: ... -->"
    return found.group(1)


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert "docs/img/far-domain.png" in local and "docs/reference/cli.md" in local
    assert [link for link in local if not (ROOT / link).exists()] == []


def test_quickstart_snippets_are_what_the_docs_promise():
    cli = [shlex.split(line, comments=True) for line in snippet("quickstart-cli").splitlines()]
    assert len(cli) == 3 and all(words[0] == "thaw" for words in cli)
    assert "builtin:digits" in cli[1]
    python = snippet("quickstart-python").splitlines()
    assert len(python) <= 6 and python[0] == "import thaw"


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


# The fast variants: the same snippets with builtin:digits swapped for a tiny folder of generated images
# named digits (so the run folder's name is as written) at 32 px, one phase-2 epoch. The installed weights
# are the real ones (`make test` installs them first).
TINY_CLI = {
    "builtin:digits": "digits",
    "--image-size 64": "--image-size 32",
    "--phase2-epochs 2": "--phase2-epochs 1",
}
TINY_PY = {'"builtin:digits"': '"digits"', "image_size=64": "image_size=32", "epochs=2": "epochs=1"}


def _rewritten(text: str, changes: dict[str, str]) -> str:
    for old, new in changes.items():
        assert old in text, f"the README snippet no longer holds {old!r}: update this test's tiny variant"
        text = text.replace(old, new)
    return text


def run_cli_quickstart(tmp_path: Path, changes: dict[str, str]) -> None:
    for line in _rewritten(snippet("quickstart-cli"), changes).splitlines():
        words = shlex.split(line, comments=True)
        done = run_thaw(words[1:], cwd=tmp_path, env=_env(tmp_path))
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert (tmp_path / "runs" / "digits" / "model.safetensors").is_file()
    assert list((tmp_path / "runs" / "digits" / "evaluations").glob("*.json"))


def run_python_quickstart(tmp_path: Path, changes: dict[str, str]) -> None:
    code = _rewritten(snippet("quickstart-python"), changes)
    done = run_thaw([], code=code, cwd=tmp_path, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    gain = float(done.stdout.strip().splitlines()[-1])  # the snippet's print: phase 2's test gain
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("digits-mobilenet_v2-") and (run / "model.safetensors").is_file()
    # what the README says it prints: phase 2's test accuracy minus the probe's (phase 1), on the test split
    phases = json.loads((run / "summary.json").read_text())["phases"]
    expected = phases["phase2"]["test"]["accuracy"] - phases["phase1"]["test"]["accuracy"]
    assert gain == pytest.approx(expected, abs=1e-4)  # summary.json's gains are rounded to 4 places


def test_the_cli_quickstart_runs_on_tiny_data(tmp_path, mobilenet_v2_installed):
    make_class_folder(tmp_path / "digits", per_class=10)
    run_cli_quickstart(tmp_path, TINY_CLI)


def test_the_python_quickstart_runs_on_tiny_data(tmp_path, mobilenet_v2_installed):
    make_class_folder(tmp_path / "digits", per_class=10)
    run_python_quickstart(tmp_path, TINY_PY)


@pytest.mark.slow
def test_the_cli_quickstart_runs_as_written(tmp_path):
    run_cli_quickstart(tmp_path, {})


@pytest.mark.slow
def test_the_python_quickstart_runs_as_written(tmp_path):
    run_python_quickstart(tmp_path, {})


@pytest.mark.slow
def test_the_own_images_quickstart_runs_as_written(tmp_path):
    """photos/ in the class-folder layout, from hymenoptera's train and val images (thaw makes the split)."""
    from conftest import shared_or_skip

    source = shared_or_skip("data/hymenoptera")
    for image in sorted(source.glob("*/*/*")):
        link = tmp_path / "photos" / image.parent.name / f"{image.parent.parent.name}-{image.name}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(image)
    for line in snippet("quickstart-own").splitlines():
        command = line.split("#")[0].split(">")[0]
        words = shlex.split(command)
        done = run_thaw(words[1:], cwd=tmp_path, env=_env(tmp_path))
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        if ">" in line:
            (tmp_path / line.split(">")[1].split()[0]).write_text(done.stdout)
    run = tmp_path / "runs" / "photos"
    assert (run / "report.html").is_file() and (run / "MODEL_CARD.md").is_file()
    rows = (tmp_path / "predictions.csv").read_text().splitlines()
    assert rows[0].startswith("path,prediction,confidence,p_ants,p_bees") and len(rows) > 100
    assert {f.name for f in (run / "export").iterdir()} == {"model.onnx", "model.onnx.json", "MODEL_CARD.md"}
    for heading in ("Decision", "Results per phase and gains", "The saved model", "Top losses"):
        assert f"<h2>{heading}" in (run / "report.html").read_text()  # what the README points to
