"""report.html: written by every run, rebuilt by ``thaw report``, self-contained, and checked in a real
browser (headless Chromium from the Debian package, offline), with screenshots at desktop and phone
width saved under build/test-artefacts/."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_flags
from PIL import Image
from zygote import run_thaw

from thaw.cli import main

TINY = [*tiny_flags(64), "--phase1-epochs", "2", "--phase2-epochs", "1", "--quiet"]
ARTEFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artefacts"
SECTIONS = (
    "decision",
    "configuration",
    "data",
    "training",
    "results",
    "evaluation",
    "top-losses",
    "forgetting",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import make_class_folder

    root = tmp_path_factory.mktemp("report")
    data = make_class_folder(root / "shapes", per_class=10, classes=("red", "blue", "green"))
    (data / "red" / "broken.png").write_bytes(b"not an image")
    out = root / "runs" / "shapes"
    assert main(["fit", str(data), *TINY, "--out", str(out)]) == 0
    return data, out


def embedded_images(page: str) -> list[Image.Image]:
    found = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in found]


def test_every_run_writes_a_self_contained_report(run):
    _, out = run
    page = (out / "report.html").read_text()
    for section in SECTIONS:
        assert f"<section id={section}>" in page, section
    images = embedded_images(page)
    split = (out / "split.csv").read_text().splitlines()
    test = [row for row in split if row.endswith(",test") and "broken" not in row]
    # curves, LRs, phase 1's L2 path (its head solved on cached features), confusion, ROC, reliability,
    # weight drift per plan, and one tile per readable test image (at most 12)
    assert len(images) == 7 + min(12, len(test))
    for image in images:
        image.verify()
    assert not re.search(r"(src|href)=['\"]?(https?:|//)", page)  # nothing fetched from a network
    assert "<link" not in page
    assert "Failed images (undecodable, skipped)" in page and "broken.png" not in page.split("Top losses")[1]
    assert "Grad-CAM of the predicted class" in page
    summary = json.loads((out / "summary.json").read_text())
    assert f"<b>{summary['final_phase']}</b>'s weights" in page
    # one reliability diagram: the run folder's file, embedded as it is, with summary.json's ECE
    reliability = base64.b64encode((out / "reliability.png").read_bytes()).decode()
    assert f"src='data:image/png;base64,{reliability}'" in page
    ece = summary["phases"][summary["final_phase"]]["test"]["ece"]
    assert f"expected calibration error {ece:.3f}." in page


def test_the_reliability_bins_and_ece_are_torchmetrics():
    """An independent oracle: torchmetrics' 15-bin ECE (summary.json's), on probabilities that fall on bin
    edges and at exactly 1, single-label and multi-label."""
    import numpy as np
    import torch
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    from thaw.use.reporting.figures import calibration

    rng = np.random.default_rng(0)
    for classes in (2, 3, 5):
        probs = rng.dirichlet(np.full(classes, 0.3), size=200).astype(np.float32)
        probs[:10] = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, 10)]  # confidence exactly 1
        on_edge = np.full(classes, 0.4 / (classes - 1), dtype=np.float32)
        on_edge[0] = 0.6  # a top-class confidence on a bin edge (9/15)
        probs[10:12] = on_edge
        labels = rng.integers(0, classes, 200)
        rows, ece = calibration(probs, labels)
        expected = multiclass_calibration_error(
            torch.from_numpy(probs), torch.from_numpy(labels), classes, n_bins=15
        )
        assert ece == pytest.approx(float(expected), abs=1e-6)
        assert sum(r["n"] for r in rows) == 200 and rows[-1]["lo"] == 1.0  # the 1.0 bin is its own
    probs = rng.random((50, 4)).astype(np.float32)
    labels = (rng.random((50, 4)) < probs).astype(np.int64)
    _, ece = calibration(probs, labels)
    flat = binary_calibration_error(
        torch.from_numpy(probs).flatten(), torch.from_numpy(labels).flatten(), n_bins=15
    )
    assert ece == pytest.approx(float(flat), abs=1e-6)


def test_report_command_rebuilds_it_and_says_why_when_the_data_is_gone(run, tmp_path, capsys):
    data, out = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    config = (copy / "config.yaml").read_text().replace(str(data), str(tmp_path / "gone"))
    (copy / "config.yaml").write_text(config)
    assert main(["report", str(copy)]) == 0
    assert "written:" in capsys.readouterr().out
    page = (copy / "report.html").read_text()
    assert "data is not available here" in page
    # curves, LRs, the cached phase 1 L2 path, confusion, weight drift
    assert "<section id=top-losses>" in page and len(embedded_images(page)) == 5


def test_bad_input_is_one_clear_line(run, tmp_path):
    _, out = run
    incomplete = tmp_path / "x.incomplete"
    incomplete.mkdir()
    for name in ("config.yaml", "plans.yaml"):
        shutil.copy(out / name, incomplete / name)
    old = tmp_path / "old"
    shutil.copytree(out, old)
    summary = json.loads((old / "summary.json").read_text())
    phases = summary.pop("phases")
    summary.pop("version")
    (old / "summary.json").write_text(json.dumps({**summary, **phases}))  # version 1: phases at the top
    cases = [(tmp_path, "not a thaw run folder"), (incomplete, "incomplete run"), (old, "older thaw")]
    for folder, message in cases:
        done = run_thaw(["report", str(folder)])
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no chromium on PATH: `make chromium` installs Debian's package (apt-get, as root)")


def browse(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--enable-logging=stderr",
        "--v=0",
        *args,
        page.resolve().as_uri(),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("device, width, height", [("desktop", 1280, 900), ("phone", 390, 844)])
def test_report_renders_in_a_real_browser(run, tmp_path, device, width, height):
    _, out = run
    page = out / "report.html"
    done = browse(page, tmp_path / "profile", f"--window-size={width},{height}", "--dump-dom")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console  # no script errors, no broken images (the page's self-check logs them)
    dom = done.stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert images == len(embedded_images(page.read_text())) and 'data-broken-images="0"' in dom
    viewport = int(re.search(r'data-viewport-width="(\d+)"', dom).group(1))  # headless: at least 500
    assert int(re.search(r'data-scroll-width="(\d+)"', dom).group(1)) <= viewport  # no sideways scroll
    for section in SECTIONS:
        assert f'<section id="{section}">' in dom

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / f"report-{device}.png"
    browse(page, tmp_path / "profile", f"--window-size={width},{4 * height}", f"--screenshot={shot}")
    image = Image.open(shot)
    assert image.size == (width, 4 * height)
    assert len(image.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 50  # not a blank page
