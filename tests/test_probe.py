"""thaw embed and thaw probe on generated images."""

import numpy as np
import pytest

from thaw.cli import main

MODEL = ["--model", "mobilenet_v3_small", "--weights", "none", "--image-size", "32"]


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))


def test_embed_writes_features_with_labels_splits_and_paths_and_never_overwrites(
    class_folder, tmp_path, capsys
):
    out = tmp_path / "features.npz"
    assert main(["embed", str(class_folder), *MODEL, "--out", str(out)]) == 0
    data = np.load(out)
    n = len(list(class_folder.rglob("*.png")))
    assert data["features"].shape == (n, 1024) and data["labels"].shape == (n,)
    assert set(data["splits"]) == {"train", "val", "test"} and list(data["class_names"]) == ["blue", "red"]
    assert all(str(k).endswith(".png") for k in data["keys"])
    before = out.read_bytes()
    assert main(["embed", str(class_folder), *MODEL, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before


def test_embed_skips_undecodable_images_by_name(class_folder, tmp_path, capsys):
    (class_folder / "red" / "broken.png").write_bytes(b"not a png")
    # exit 3: the features were written, but some input could not be read (SECURITY.md, exit codes)
    assert main(["embed", str(class_folder), *MODEL, "--out", str(tmp_path / "f.npz")]) == 3
    assert "broken.png" in capsys.readouterr().err
    assert not any("broken" in str(k) for k in np.load(tmp_path / "f.npz")["keys"])


def test_probe_two_models_side_by_side(class_folder, tmp_path, capsys):
    import json

    out = tmp_path / "probe.json"
    args = ["probe", str(class_folder), "--model", "mobilenet_v3_small@none,resnet18", "--weights", "none"]
    assert main([*args, "--image-size", "32", "--folds", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mobilenet_v3_small" in printed and "resnet18" in printed and "+-" in printed
    results = json.loads(out.read_text())
    assert [r["model"] for r in results] == ["mobilenet_v3_small", "resnet18"]
    for r in results:
        assert r["folds"] == 3 and len(r["linear"]) == 3 and all(0 <= a <= 1 for a in r["linear"] + r["knn"])


def test_embed_writes_parquet_with_pyarrow(class_folder, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "features.parquet"
    assert main(["embed", str(class_folder), *MODEL, "--out", str(out)]) == 0
    table = pq.read_table(out)
    n = len(list(class_folder.rglob("*.png")))
    assert table.num_rows == n and table.column_names == ["key", "split", "label", "class", "features"]
    assert {len(f) for f in table.column("features").to_pylist()} == {1024}
    assert set(table.column("class").to_pylist()) == {"blue", "red"}


def test_embed_parquet_without_pyarrow_is_one_clear_line(class_folder, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    out = tmp_path / "features.parquet"
    assert main(["embed", str(class_folder), *MODEL, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs pyarrow" in err[0] and "pip install" in err[0]
    assert not out.exists() and not list(tmp_path.glob("features*"))
