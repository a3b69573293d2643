"""Fuzzed readers: Hypothesis generates CSVs, split files, .npz archives, YAML configs, DICOM files and
flag values; every one is either accepted (and read correctly) or refused with a ThawError of one line.
A few hundred inputs in all, kept fast (small ``max_examples``, no deadline: the machine is shared)."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import make_class_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from thaw.core.config import DataConfig, RunConfig
from thaw.core.errors import ThawError
from thaw.data.sources import discover

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def refused_in_one_line(err: ThawError) -> None:
    text = str(err)
    assert text and "\n" not in text and "Traceback" not in text, text


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("fuzz") / "img", per_class=4)


# ----------------------------------------------------------------------------- CSV

cell = st.one_of(
    st.sampled_from(["", " ", "red", "blue", "0", "1", "train", "val", "test", "tset", "nope.png", '"', ","]),
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12),
)


@FUZZ
@given(
    header=st.lists(st.sampled_from(["path", "label", "split", "Path", "x", "", "label", "a b"]), max_size=5),
    rows=st.lists(
        st.tuples(st.integers(0, 9), st.one_of(st.none(), cell), st.one_of(st.none(), cell), cell),
        max_size=12,
    ),
    bom=st.booleans(),
)
def test_csv_reader(images, header, rows, bom):
    files = sorted(images.rglob("*.png"))
    with tempfile.TemporaryDirectory(dir=images.parent) as tmp:
        lines = [",".join(header)]
        for index, label, split, extra in rows:
            path = (
                f"img/{files[index].parent.name}/{files[index].name}" if index < len(files) else "img/x.png"
            )
            values = [path, label if label is not None else files[index % 8].parent.name, split or "", extra]
            lines.append(",".join(v.replace("\n", " ") for v in values[: max(len(header), 1)]))
        csv_path = Path(tmp) / "data.csv"
        csv_path.write_bytes(("\ufeff" if bom else "").encode() + ("\n".join(lines) + "\n").encode())
        (Path(tmp) / "img").symlink_to(images, target_is_directory=True)
        try:
            sources = discover(DataConfig(path=str(csv_path)))
        except ThawError as err:
            refused_in_one_line(err)
            return
        assert sources.items and len(sources.class_names) >= 2
        assert all(Path(it.key).is_file() for it in sources.items)
        assert len({it.key for it in sources.items}) == len(sources.items)


# ----------------------------------------------------------------------------- split files


@FUZZ
@given(
    header=st.sampled_from(["key,split", "key,label,class,split", "key,part", "split,key", ""]),
    values=st.lists(
        st.one_of(cell, st.sampled_from(["train", "val", "test", "unlabelled", "TRAIN"])), max_size=20
    ),
    absolute=st.booleans(),
)
def test_split_file_reader(images, header, values, absolute):
    files = sorted(images.rglob("*.png"))
    with tempfile.TemporaryDirectory(dir=images.parent) as tmp:
        columns = header.split(",") if header else []
        lines = [header]
        for i, value in enumerate(values):
            key = str(files[i % len(files)].resolve() if absolute else files[i % len(files)])
            row = {
                "key": key,
                "split": value.replace("\n", " ").replace(",", " "),
                "label": "0",
                "class": "x",
            }
            lines.append(",".join(row.get(c, "") for c in columns))
        split = Path(tmp) / "split.csv"
        split.write_text("\n".join(lines) + "\n")
        try:
            sources = discover(DataConfig(path=str(images), split_file=str(split)))
        except ThawError as err:
            refused_in_one_line(err)
            return
        assert {it.split for it in sources.items} <= {"train", "val", "test", "unlabelled"}


# ----------------------------------------------------------------------------- .npz

dtypes = st.sampled_from([np.uint8, np.int64, np.float32, np.uint16, np.bool_, np.int8])


@st.composite
def arrays(draw):
    shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
    dtype = draw(dtypes)
    data = draw(st.integers(-3, 300))
    return np.full(shape, data).astype(dtype) if shape else np.zeros(0, dtype)


@FUZZ
@given(
    members=st.dictionaries(
        st.sampled_from(
            ["train_images", "train_labels", "val_images", "val_labels", "test_images", "label_names", "x"]
        ),
        arrays(),
        max_size=6,
    ),
    raw=st.one_of(st.none(), st.binary(max_size=64)),
)
def test_npz_reader(tmp_path_factory, members, raw):
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    if raw is not None:
        path.write_bytes(raw)
    else:
        np.savez(path, **members)
    try:
        sources = discover(DataConfig(path=str(path)))
    except ThawError as err:
        refused_in_one_line(err)
        return
    assert sources.items and all(it.array is not None for it in sources.items)


# ----------------------------------------------------------------------------- YAML configs

yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
sections = {
    "data": ["batch_size", "image_size", "val_fraction", "augment", "path", "format"],
    "model": ["name", "weights", "dropout"],
    "phase1": ["epochs", "patience", "lr"],
    "phase2": ["epochs", "warmup_epochs", "weight_decay"],
}


@st.composite
def configs(draw):
    out = {}
    for key in draw(
        st.lists(st.sampled_from([*sections, "lr", "seed", "lr_ratio", "lrr", "out"]), max_size=4)
    ):
        if key in sections:
            out[key] = draw(
                st.dictionaries(st.sampled_from(sections[key] + ["oops"]), yaml_values, max_size=3)
            )
        else:
            out[key] = draw(yaml_values)
    return out


@FUZZ
@given(structure=configs(), text=st.one_of(st.none(), st.text(max_size=40)))
def test_yaml_config_reader(tmp_path_factory, structure, text):
    import yaml

    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(structure))
    try:
        config = RunConfig.from_yaml(path).validate()
    except ThawError as err:
        refused_in_one_line(err)
        return
    assert isinstance(config, RunConfig)
    assert RunConfig.from_dict(config.to_dict()) == config  # what was accepted round-trips


# ----------------------------------------------------------------------------- DICOM


@FUZZ
@given(
    rows=st.integers(1, 6),
    cols=st.integers(1, 6),
    bits=st.sampled_from([8, 16]),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR"]),
    samples=st.sampled_from([1, 3]),
    slope=st.one_of(st.floats(-10, 10), st.none()),
    pixels=st.one_of(st.none(), st.binary(max_size=200)),
    truncate=st.one_of(st.none(), st.integers(0, 400)),
    exact=st.booleans(),
)
def test_dicom_reader(
    tmp_path_factory, rows, cols, bits, photometric, samples, slope, pixels, truncate, exact
):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from thaw.core.decoding import DECODE_ERRORS, read_image

    path = tmp_path_factory.mktemp("dcm") / "x.dcm"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = rows, cols, bits, bits, bits - 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = samples, photometric, 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    size = rows * cols * samples * bits // 8
    if exact:  # as many pixel bytes as the header says
        pixels = ((pixels or b"\x07") * size)[:size]
    if pixels is not None:
        ds.PixelData = pixels
    ds.save_as(str(path), enforce_file_format=True)
    if truncate is not None:
        path.write_bytes(path.read_bytes()[:truncate])
    # a well-formed file (all its pixel bytes, an interpretation that matches its samples) must decode
    well_formed = (
        truncate is None
        and pixels is not None
        and len(pixels) == size
        and (photometric == "RGB") == (samples == 3)
        and photometric != "PALETTE COLOR"  # needs a palette this file does not carry
    )
    try:
        image, _ = read_image(str(path), 3)
    except DECODE_ERRORS as err:  # an error row in predict, a skipped file in training: it names the file's
        assert not well_formed, f"a well-formed DICOM was refused: {err!r}"  # problem in its first line
        return
    except ThawError as err:
        assert not well_formed, f"a well-formed DICOM was refused: {err}"
        refused_in_one_line(err)
        return
    assert image.mode == "RGB" and min(image.size) >= 1


# ----------------------------------------------------------------------------- flags


def _fit_parser() -> argparse.ArgumentParser:
    from thaw.cli import parser

    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["fit"]


@FUZZ
@given(
    flag=st.sampled_from(
        [
            "--lr",
            "--lr-ratio",
            "--batch-size",
            "--image-size",
            "--seed",
            "--workers",
            "--unfreeze",
            "--val-fraction",
            "--phase1-epochs",
            "--phase2-warmup-epochs",
            "--dicom-window",
            "--augment",
            "--label-fraction",
            "--labels-per-class",
            "--target-sensitivity",
            "--dropout",
            "--monitor",
        ]
    ),
    value=st.one_of(
        st.text(max_size=10),
        st.integers(-(2**40), 2**40).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.sampled_from(["auto", "none", "nan", "-inf", "1e-3", "0", "all", "40,400", "crop:0.6,hflip"]),
    ),
)
def test_flag_parsing(flag, value):
    from thaw.cli import parser
    from thaw.cli.flags import NONE, config_from_args
    from thaw.cli.flags import settings as _settings

    if value.startswith("-"):
        argv = ["fit", "data", f"{flag}={value}"]
    else:
        argv = ["fit", "data", flag, value]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parser().parse_args(argv)
    except SystemExit as stop:  # argparse's own refusal: its usage and one error line, exit 2
        assert stop.code == 2 and stderr.getvalue().strip().splitlines()[-1].startswith("usage") is False
        return
    try:
        config = config_from_args(args, RunConfig())
        if config.data.dicom_window:
            from thaw.core.config import dicom_window

            dicom_window(config.data.dicom_window)
    except ThawError as err:
        refused_in_one_line(err)
        return
    # accepted: the value the parser read is the one the config holds, and the config survives its YAML
    dest = next(a.dest for a in _fit_parser()._actions if flag in a.option_strings)
    if dest in {key for _, key, _, _ in _settings(RunConfig())}:
        given = getattr(args, dest)
        held = functools.reduce(getattr, dest.split("."), config)
        assert held == (None if given is NONE else given), (flag, value, given, held)
    assert config.data.path == "data" and RunConfig.from_dict(yaml.safe_load(config.to_yaml())) == config


# ----------------------------------------------------------------------------- YAML: aliases, plans, numbers

yaml_tokens = st.sampled_from(
    [
        "a",
        "b",
        "lr",
        "name",
        ":",
        " ",
        "\n",
        "- ",
        "&x ",
        "*x",
        "&y ",
        "*y",
        "<<: ",
        "[",
        "]",
        "{",
        "}",
        ",",
        "1e-3",
        "1E5",
        "-2e-2",
        "0.5",
        "3",
        "true",
        "null",
        "'",
        '"',
        "#",
        "!!python/object:os.system ",
        "  ",
    ]
)


@FUZZ
@given(tokens=st.lists(yaml_tokens, max_size=40), copies=st.integers(1, 12))
def test_yaml_reader_bounds_aliases_and_reads_numbers_one_way(tokens, copies):
    """Any text: data, or one line (never a Python object from a tag, never an alias blown up)."""
    from thaw.core import yaml_file

    text = "".join(tokens) * copies
    try:
        value = yaml_file.load(text, "fuzz.yaml")
    except ThawError as err:
        refused_in_one_line(err)
        return
    kinds = (dict, list, str, int, float, bool, type(None))
    stack = [value]
    while stack:  # plain data only, and small: every alias is counted
        item = stack.pop()
        assert isinstance(item, kinds), type(item)
        if isinstance(item, str):  # 1e-3 is a number, in config.yaml and --plans alike
            assert not re.fullmatch(r"[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+", item)
        if isinstance(item, dict):
            stack += [*item.values(), *item]
        elif isinstance(item, list):
            stack += item


plan_values = st.one_of(
    st.sampled_from(["head", "all", "last:2", "groups:0,1", "cached", "online", "1e-3", "2", "-1", "cosine"]),
    st.integers(-2, 100),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.booleans(),
)


@FUZZ
@given(
    plans=st.lists(
        st.dictionaries(
            st.sampled_from(["name", "train", "lr", "lr_ratio", "epochs", "features", "views", "x"]),
            plan_values,
            max_size=5,
        ),
        max_size=60,
    ),
    alias=st.booleans(),
)
def test_plans_reader(tmp_path_factory, plans, alias):
    import yaml

    from thaw.core.strategies import read_plans

    path = tmp_path_factory.mktemp("plans") / "plans.yaml"
    text = yaml.safe_dump(plans)
    if alias and plans:
        text = "- &p " + text[2:] + "- *p\n" * 10 if text.startswith("- ") else text
    path.write_text(text)
    try:
        raw = read_plans(str(path))
    except ThawError as err:
        refused_in_one_line(err)
        return
    assert isinstance(raw, list) and 0 < len(raw) <= 50


# ----------------------------------------------------------------------------- shards: tars and manifests


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 30)).save(buf, format="png")
    return buf.getvalue()


member = st.tuples(
    st.sampled_from(["a", "b", "c", "d/e", "../x", "f.g", ""]),
    st.sampled_from(["png", "jpg", "cls", "json", "txt", "npy"]),
    st.one_of(st.just(b"png"), st.sampled_from([b"0", b"1", b"7", b"x", b'{"label": 1}', b'{"label": "a"}'])),
    st.one_of(st.none(), st.integers(0, 1 << 41)),  # a header that lies about its size
)


@FUZZ
@given(
    members=st.lists(member, max_size=10),
    cut=st.one_of(st.none(), st.integers(0, 4096)),
    flips=st.lists(st.tuples(st.integers(0, 8191), st.integers(0, 255)), max_size=4),
    classes=st.one_of(st.none(), st.lists(st.sampled_from(["red", "blue", "", "red "]), max_size=4)),
)
def test_shard_reader(tmp_path_factory, members, cut, flips, classes):
    """A tar of any members (repeated, lying sizes, cut short, bytes flipped) and any classes.json: samples
    whose byte ranges lie inside the shard, or one line; never a hang (a lying header is refused)."""
    import json
    import tarfile
    import time

    from thaw.data.shards import find

    folder = tmp_path_factory.mktemp("tar")
    shard = folder / "train-000000.tar"
    png = _png()
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tar:
        for stem, ext, data, claimed in members:
            data = png if data == b"png" else data
            info = tarfile.TarInfo(f"{stem}.{ext}" if stem else ext)
            info.size = len(data) if claimed is None else claimed
            tar.addfile(info, io.BytesIO(data) if claimed is None else None)
    raw = bytearray(shard.read_bytes())
    for at, value in flips:
        if at < len(raw):
            raw[at] = value
    shard.write_bytes(bytes(raw[:cut] if cut is not None else raw))
    if classes is not None:
        (folder / "classes.json").write_text(json.dumps(classes))
    start = time.perf_counter()
    try:
        sources = find(str(shard))
    except ThawError as err:
        refused_in_one_line(err)
        return
    finally:
        assert time.perf_counter() - start < 10
    size = shard.stat().st_size
    for it in sources.items:
        assert 0 <= it.source.offset and it.source.offset + it.source.size <= size
    assert len({it.key for it in sources.items}) == len(sources.items)


@pytest.fixture(scope="module")
def written_shards(tmp_path_factory, images) -> Path:
    from thaw.cli import main

    out = tmp_path_factory.mktemp("written") / "shards"
    assert main(["shards", str(images), "--out", str(out), "--shard-size", "100"]) == 0
    return out


manifest_value = st.one_of(
    st.integers(-5, 1 << 40),
    st.sampled_from(["../x.tar", "/etc/passwd", "train-000000.tar", "http://h/x.tar", "a.png", "", "0"]),
    st.none(),
    st.lists(st.integers(0, 10), max_size=3),
)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["file", "split", "samples", "row", "key", "member", "offset", "size"]),
            manifest_value,
        ),
        max_size=4,
    )
)
def test_manifest_reader(written_shards, tmp_path_factory, edits):
    """Any edit to a manifest thaw wrote: samples inside their own shards, or one line."""
    import json
    import shutil

    from thaw.data.shards import find

    copy = Path(shutil.copytree(written_shards, tmp_path_factory.mktemp("m") / "shards"))
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["shards"][0]
    for field, value in edits:
        row = entry["samples"][0] if isinstance(entry.get("samples"), list) and entry["samples"] else None
        index = {"key": 0, "member": 1, "offset": 2, "size": 3}.get(field)
        if index is not None and isinstance(row, list) and len(row) == 5:
            row[index] = value
        elif field == "row" and isinstance(entry.get("samples"), list):
            entry["samples"].append(value)
        elif field in ("file", "split", "samples"):
            entry[field] = value
    (copy / "manifest.json").write_text(json.dumps(manifest))
    try:
        sources = find(str(copy))
    except ThawError as err:
        refused_in_one_line(err)
        return
    for it in sources.items:
        shard = Path(it.source.url)
        assert shard.resolve().parent == copy.resolve()
        assert 0 <= it.source.offset and it.source.offset + it.source.size <= shard.stat().st_size
