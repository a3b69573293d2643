"""Datasets as shards (``thaw.data.shards``): ``thaw shards`` of a folder of real PNGs, then fit, embed and
predict on the shards (local, and over HTTP with Range requests, streamed) give what the folder gives;
every bad input is one line and a non-zero exit."""

from __future__ import annotations

import csv
import glob
import io
import json
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, tiny_flags

from thaw.cli import main
from thaw.data import shards

FIT = [*tiny_flags(), "--augment", "none", "--phase1-epochs", "1", "--phase2-epochs", "1", "--quiet"]


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thaw: error: "), err
    return lines[0]


def split_of(run: Path) -> dict[str, str]:
    with (run / "split.csv").open() as fh:
        return {row["key"]: row["split"] for row in csv.DictReader(fh)}


def cached_features(home: Path) -> dict[tuple, np.ndarray]:
    """Every feature-cache entry under ``home``: its image keys -> its rows."""
    out = {}
    for entry in glob.glob(str(home / "cache" / "features" / "*")):
        keys = tuple(json.loads(Path(entry, "keys.json").read_text()))
        out[keys] = np.load(Path(entry, "x.npy"))
    return out


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    data = make_class_folder(root / "shapes", per_class=8)
    out = root / "out"
    assert main(["shards", str(data), "--out", str(out), "--shard-size", "5"]) == 0
    return data, out


def serve(root: Path, ranges: bool = True):
    """A local HTTP server of ``root``; ``ranges``: it answers Range requests (else the standard library's
    server, which ignores them)."""

    class Ranged(BaseHTTPRequestHandler):
        def do_GET(self):
            path = root / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data, wanted = path.read_bytes(), self.headers.get("Range")
            if wanted:
                start, stop = (int(v) for v in wanted.removeprefix("bytes=").split("-"))
                data = data[start : stop + 1]
            self.send_response(206 if wanted else 200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    class Plain(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Ranged if ranges else Plain)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_written_shards_are_webdataset_with_the_split_and_classes(folder_and_shards):
    import webdataset

    data, out = folder_and_shards
    names = sorted(p.name for p in out.iterdir())
    assert names[:2] == ["classes.json", "manifest.json"] and "train-000000.tar" in names
    assert json.loads((out / "classes.json").read_text()) == ["blue", "red"]
    samples = list(webdataset.WebDataset(str(out / "train-000000.tar"), shardshuffle=False))
    assert len(samples) == 5 and all(s["cls"] in (b"0", b"1") for s in samples)
    meta = json.loads(samples[0]["json"])
    assert Path(meta["key"]).read_bytes() == samples[0]["png"]  # the file's own bytes


def test_round_trip_fit_gives_the_folders_split_and_phase1_features(folder_and_shards, tmp_path, monkeypatch):
    """Exact (bitwise) features: the shards hold each file's own bytes, decoded by the same code, in the
    same order and batches, so the backbone sees the same tensors."""
    data, out = folder_and_shards
    runs = {}
    for name, source in (("folder", data), ("shards", out)):
        monkeypatch.setenv("THAW_HOME", str(tmp_path / name))
        assert main(["fit", str(source), *FIT, "--out", str(tmp_path / f"run-{name}")]) == 0
        runs[name] = cached_features(tmp_path / name)
    assert split_of(tmp_path / "run-folder") == split_of(tmp_path / "run-shards")
    assert runs["folder"].keys() == runs["shards"].keys() and len(runs["folder"]) == 3  # train, val, test
    for keys, x in runs["folder"].items():
        assert np.array_equal(x, runs["shards"][keys])


def test_embed_over_http_streamed_and_predict_match_the_folder(
    folder_and_shards, tmp_path, monkeypatch, capsys
):
    data, out = folder_and_shards
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    server, url = serve(out.parent)
    try:
        flags = ["--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--image-size", "32"]  # not random
        assert main(["embed", str(data), "--out", str(tmp_path / "a.npz"), *flags]) == 0
        assert main(["embed", f"{url}/out/", "--out", str(tmp_path / "b.npz"), *flags]) == 0
        pattern = f"{url}/out/train-{{000000..000002}}.tar::{url}/out/val-000000.tar"
        run = tmp_path / "run"
        assert main(["fit", pattern, *FIT, "--image-store", "stream", "--out", str(run)]) == 0
    finally:
        server.shutdown()
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    order = {k: i for i, k in enumerate(a["keys"])}
    assert sorted(a["keys"]) == sorted(b["keys"])
    assert np.array_equal(a["features"][[order[k] for k in b["keys"]]], b["features"])
    assert set(split_of(run).values()) == {"train", "val"}
    assert json.loads((run / "summary.json").read_text())["hardware"]["image_store"] == "stream"
    predicted = {}
    for name, source in (("shards", str(out)), ("folder", str(data))):
        capsys.readouterr()
        assert main(["predict", str(run), source, "--csv"]) == 0
        rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
        assert len(rows) == 16 and not any(r["error"] for r in rows)
        predicted[name] = {r["path"]: r["prediction"] for r in rows}
    assert predicted["shards"] == predicted["folder"]  # the shards' keys are the files' paths


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_bad_shards_are_one_line(folder_and_shards, tmp_path, capsys):
    data, out = folder_and_shards
    png = next(data.rglob("*.png")).read_bytes()
    cases = {}
    missing = tmp_path / "missing"  # a shard the manifest lists is gone
    missing.mkdir()
    for f in out.iterdir():
        if f.name != "train-000001.tar":
            (missing / f.name).write_bytes(f.read_bytes())
    cases["does not exist"] = str(missing)
    wrong = tmp_path / "wrong"  # a label outside classes.json
    wrong.mkdir()
    (wrong / "classes.json").write_text('["a", "b"]')
    _tar(wrong / "train-0.tar", [("x.png", png), ("x.cls", b"0"), ("y.png", png), ("y.cls", b"5")])
    cases["label 5 is outside the 2 classes"] = str(wrong / "train-0.tar")
    corrupt = tmp_path / "corrupt"  # a tar member cut short
    corrupt.mkdir()
    _tar(corrupt / "train-0.tar", [("x.png", png), ("x.cls", b"0")])
    raw = (corrupt / "train-0.tar").read_bytes()
    (corrupt / "train-0.tar").write_bytes(raw[: 512 + len(png) // 2])
    cases["not a readable tar file"] = str(corrupt)
    unsplit = tmp_path / "unsplit"  # no split in the names, no split file
    unsplit.mkdir()
    _tar(unsplit / "data-0.tar", [("x.png", png), ("x.cls", b"0"), ("y.png", png), ("y.cls", b"1")])
    cases["carry no split"] = str(unsplit)
    cases["cannot reach"] = "http://127.0.0.1:9/shards/"  # the discard port: nothing listens
    for needle, source in cases.items():
        assert main(["fit", source, *FIT, "--out", str(tmp_path / "never")]) != 0
        assert needle in one_line(capsys.readouterr().err), needle
    assert not (tmp_path / "never").exists()


def test_a_server_without_range_requests_is_one_line(folder_and_shards, tmp_path, capsys):
    _, out = folder_and_shards
    server, url = serve(out.parent, ranges=False)
    try:
        code = main(["embed", f"{url}/out/", "--out", str(tmp_path / "e.npz"), *tiny_flags()[:4]])
    finally:
        server.shutdown()
    assert code != 0 and "ignores HTTP Range requests" in one_line(capsys.readouterr().err)


def test_shards_never_overwrite_and_size_in_megabytes(folder_and_shards, tmp_path, capsys):
    data, out = folder_and_shards
    before = sorted(p.name for p in out.iterdir())
    assert main(["shards", str(data), "--out", str(out)]) != 0
    assert "never overwrites" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in out.iterdir()) == before
    assert shards.parse_shard_size("64MB") == (10**12, 64 * 2**20)
    assert shards.parse_shard_size("200") == (200, 3e12)
    with pytest.raises(Exception, match="shard-size"):
        shards.parse_shard_size("lots")
    digits = tmp_path / "digits"
    assert main(["shards", "builtin:digits", "--out", str(digits), "--shard-size", "0.1MB"]) == 0
    manifest = json.loads((digits / "manifest.json").read_text())
    sizes = [(digits / e["file"]).stat().st_size for e in manifest["shards"]]
    assert len(sizes) > 30 and max(sizes) <= 0.1 * 2**20 + 10240  # tar pads its end to 10 KiB
    found = shards.find(str(digits))
    assert len(found.items) == 1797 and found.class_names == [str(c) for c in range(10)]
    capsys.readouterr()


def test_litdata_round_trip_keeps_the_split_and_the_features(folder_and_shards, tmp_path, monkeypatch):
    """LitData's optimized format, written by ``thaw shards --shard-format litdata``: the folder's split,
    and its embedding bitwise (each sample holds the file's own bytes)."""
    from thaw.core.config import DataConfig
    from thaw.data.sources import discover

    data, _ = folder_and_shards
    lit = tmp_path / "lit"
    assert (
        main(["shards", str(data), "--out", str(lit), "--shard-format", "litdata", "--shard-size", "20KB"])
        == 0
    )
    assert (lit / "train" / "index.json").is_file() and len(list((lit / "train").glob("chunk-*.bin"))) > 1
    folder, shards_ = discover(DataConfig(path=str(data))), discover(DataConfig(path=str(lit)))
    assert {it.key: it.split for it in folder.items} == {it.key: it.split for it in shards_.items}
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    flags = ["--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--image-size", "32"]
    for name, source in (("a", data), ("b", lit)):
        assert main(["embed", str(source), "--out", str(tmp_path / f"{name}.npz"), *flags]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    order = {k: i for i, k in enumerate(a["keys"])}
    assert np.array_equal(a["features"][[order[k] for k in b["keys"]]], b["features"])


def test_shards_from_another_writer_are_read_once_without_a_manifest(folder_and_shards, tmp_path):
    """Plain WebDataset shards (an image and a ``.cls`` per sample, ``classes.json``): one pass lists
    them; each image decodes to the same pixels as its file."""
    from thaw.core.config import DataConfig
    from thaw.data.decoded import open_image
    from thaw.data.sources import Item, discover

    data, _ = folder_and_shards
    pngs = sorted(data.rglob("*.png"))
    root = tmp_path / "foreign"
    root.mkdir()
    (root / "classes.json").write_text('["blue", "red"]')
    for split, chunk in (("train", pngs[::2]), ("val", pngs[1::2])):
        members = []
        for i, png in enumerate(chunk):
            members += [
                (f"s{i}.png", png.read_bytes()),
                (f"s{i}.cls", str(int(png.parent.name == "red")).encode()),
            ]
        _tar(root / f"{split}-0.tar", members)
    found = discover(DataConfig(path=str(root / "{train,val}-0.tar")))
    assert [it.key for it in found.split("train")][:2] == [f"{root}/train-0.tar#s0", f"{root}/train-0.tar#s1"]
    assert [it.label for it in found.split("val")] == [int(p.parent.name == "red") for p in pngs[1::2]]
    item = found.split("val")[3]
    same = open_image(Item(str(pngs[1::2][3]), 0), 3)
    assert np.array_equal(np.asarray(open_image(item, 3)), np.asarray(same))
