"""MODEL_CARD.md in every run folder and beside every export: Hugging Face-style YAML metadata plus text
(data and split, metrics with bootstrap intervals, operating point, recipe and gains, intended use and
limits); the predictors refuse a model whose card and file disagree."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import yaml
from conftest import make_class_folder, tiny_config

import thaw
from thaw.core.errors import ThawError
from thaw.use.model_card import CARD, read_card


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("card")
    data = make_class_folder(root / "shapes", per_class=12)
    return thaw.fit(tiny_config(data, root / "run"), quiet=True).path


def metadata(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_run_folder_has_a_card_with_metadata_and_the_sections(run):
    card = run / CARD
    meta = metadata(card)
    summary = json.loads((run / "summary.json").read_text())
    model_sha = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert meta["library_name"] == "thaw" and meta["pipeline_tag"] == "image-classification"
    assert (
        meta["thaw"]["files"]
        == {"model.safetensors": model_sha}
        == {"model.safetensors": summary["model_sha256"]}
    )
    assert meta["thaw"]["classes"] == summary["classes"] == ["blue", "red"]
    (result,) = meta["model-index"][0]["results"]
    scores = {m["type"]: m["value"] for m in result["metrics"]}
    assert result["dataset"]["split"] == "test"
    assert scores["accuracy"] == pytest.approx(summary["operating"]["test"]["accuracy"], abs=1e-4)
    text = card.read_text()
    for heading in (
        "## Data and split",
        "## Metrics",
        "## Operating point",
        "## Training recipe",
        "## Intended use and limits",
    ):
        assert heading in text
    low, high = summary["operating"]["test"]["ci"]["accuracy"]
    assert f"[{100 * low:.1f}, {100 * high:.1f}]" in text  # the bootstrap interval, as measured
    assert "phase2 changed" in text and "(saved)" in text  # what phase 2 gained, which plan is kept


def test_the_predictor_refuses_a_model_its_card_does_not_describe(run, tmp_path):
    assert thaw.load(run).class_names == ["blue", "red"]
    for change, error in (
        (lambda m: m["thaw"].update(classes=["red", "blue"]), "are not the ones"),
        (lambda m: m["thaw"]["files"].update({"model.safetensors": "0" * 64}), "sha256 differs"),
        (lambda m: m["thaw"].update(files={"other.safetensors": "0" * 64}), "not model.safetensors"),
    ):
        copy = tmp_path / f"copy-{error.split()[0]}"
        shutil.copytree(run, copy)
        meta = metadata(copy / CARD)
        change(meta)
        body = (copy / CARD).read_text().split("---\n", 2)[2]
        (copy / CARD).write_text("---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + body)
        with pytest.raises(ThawError, match=error):
            thaw.load(copy)
    (copy / CARD).write_text("no metadata")
    with pytest.raises(ThawError, match="no YAML metadata"):
        thaw.load(copy)
    (copy / CARD).unlink()  # a model handed over without a card: nothing to compare
    assert thaw.load(copy).class_names == ["blue", "red"]


def test_every_export_has_a_card_beside_it(run, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX export needs the export extra")
    from thaw.use.export import export_run
    from thaw.use.onnx_predictor import OnnxPredictor

    out = tmp_path / "served"
    safetensors = export_run(run, "safetensors", out / "model.safetensors").path
    onnx = export_run(run, "onnx", out / "model.onnx").path
    card = read_card(out / CARD)
    assert set(card["files"]) == {"model.safetensors", "model.onnx"}  # both exports, one card
    assert card["files"]["model.onnx"] == hashlib.sha256(onnx.read_bytes()).hexdigest()
    assert thaw.load(safetensors).class_names == OnnxPredictor(onnx).class_names == ["blue", "red"]
    text = (out / CARD).read_text()
    (out / CARD).write_text(text.replace(card["files"]["model.onnx"], "0" * 64))  # a card for another file
    with pytest.raises(ThawError, match="sha256 differs"):
        OnnxPredictor(onnx)
