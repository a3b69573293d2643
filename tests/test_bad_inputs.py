"""The bad-input corpus: what a new user feeds thaw, generated, run through fit, evaluate, predict and
weights import. Every case ends in its exit code with one actionable line naming the file or value (or a
warning naming the skipped file), never a traceback, and never a folder that looks like a finished run."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folder, make_image, tiny_flags
from PIL import Image

from thaw.cli import main

FAST = tiny_flags()
TINY = [*FAST, "--phase1-epochs", "1", "--phase2-epochs", "0", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    data = make_class_folder(root / "shapes", per_class=6)
    out = root / "runs" / "tiny"
    assert main(["fit", str(data), *TINY, "--out", str(out)]) == 0
    return data, out


# ----------------------------------------------------------------------------- awkward image files


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A small PNG whose header claims ``width`` x ``height`` (Pillow refuses it before decoding)."""
    Image.new("L", (8, 8)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))


def ramp16(size=(64, 16), top: int = 4095) -> Image.Image:
    """A 12-bit ramp stored as 16-bit: Pillow's plain convert("L") clips it to near white."""
    ramp = np.tile(np.linspace(0, top, size[0]).astype(np.uint16), (size[1], 1))
    return Image.fromarray(ramp)


def exif_rotated(path: Path) -> None:
    img = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    img.save(path, exif=exif)


def animated(path: Path) -> None:
    frames = [Image.new("P", (16, 16), i) for i in (10, 200)]
    frames[0].save(path, save_all=True, append_images=frames[1:])


def float_tiff(path: Path, nan: bool = False) -> None:
    array = np.linspace(-1, 3, 256, dtype=np.float32).reshape(16, 16)
    if nan:
        array[3, 3] = np.nan
    Image.fromarray(array, mode="F").save(path)


IMAGES = {  # name -> (writer, skipped?)
    "corrupt.png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200)), True),
    "truncated.png": (lambda p: (make_image(p, (1, 2, 3), 0), p.write_bytes(p.read_bytes()[:60])), True),
    "zero.jpg": (lambda p: p.write_bytes(b""), True),
    "text.png": (lambda p: p.write_text("not an image\n"), True),
    "png-named.jpg": (lambda p: Image.new("RGB", (20, 20), (9, 9, 9)).save(p, format="PNG"), False),
    "ramp16.png": (lambda p: ramp16().save(p), False),
    "ramp16.tif": (lambda p: ramp16().save(p), False),
    "flat16.png": (lambda p: Image.fromarray(np.full((8, 8), 700, np.uint16)).save(p), False),
    "cmyk.jpg": (lambda p: Image.new("CMYK", (20, 20), (0, 200, 30, 0)).save(p), False),
    "palette.png": (lambda p: Image.new("RGB", (20, 20), (9, 200, 9)).convert("P").save(p), False),
    "rgba.png": (lambda p: Image.new("RGBA", (20, 20), (9, 9, 200, 40)).save(p), False),
    "la.png": (lambda p: Image.new("LA", (20, 20), (99, 40)).save(p), False),
    "bilevel.png": (lambda p: Image.new("1", (20, 20), 1).save(p), False),
    "bomb.png": (bomb_png, True),
    "strip.png": (lambda p: Image.new("L", (1, 10000), 128).save(p), False),
    "tiny.png": (lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p), False),
    "animated.gif": (animated, False),
    "exif.jpg": (exif_rotated, False),
    "float.tif": (float_tiff, False),
    "float-nan.tif": (lambda p: float_tiff(p, nan=True), True),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_predict_on_awkward_image(trained, tmp_path, capsys, name):
    _, run = trained
    writer, skipped = IMAGES[name]
    path = tmp_path / name
    writer(path)
    assert main(["predict", str(run), str(path), "--csv"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if skipped:  # named on stderr, and its CSV row has no prediction and says why in the error column
        assert f"could not read 1 file(s): {path}" in err
        row = next(line for line in out.splitlines() if name in line)
        assert row.split(",")[1] == "" and "cannot read image" in row
    else:
        assert out.count(name) == 1 and ",nan" not in out and not err


def test_sixteen_bit_keeps_its_range_and_strips_are_bounded(tmp_path):
    from thaw.data.images import MAX_ASPECT, open_image
    from thaw.data.sources import Item

    ramp16().save(tmp_path / "ramp.png")
    grey = np.asarray(open_image(Item(str(tmp_path / "ramp.png"), 0), 1))
    assert grey.min() == 0 and grey.max() == 255 and abs(grey.mean() - 127.5) < 2  # not 94% white
    Image.new("L", (1, 10000), 1).save(tmp_path / "strip.png")
    assert open_image(Item(str(tmp_path / "strip.png"), 0), 3).size == (1, MAX_ASPECT)
    exif_rotated(tmp_path / "exif.jpg")
    assert open_image(Item(str(tmp_path / "exif.jpg"), 0), 3).size == (20, 40)


def test_fit_skips_a_bomb_by_name_and_strict_stops(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=6)
    bomb_png(data / "red" / "bomb.png")
    out = tmp_path / "strict"
    assert main(["fit", str(data), *TINY, "--strict-images", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bomb.png" in err and "--strict-images" in err and not out.exists()
    assert main(["fit", str(data), *TINY, "--out", str(tmp_path / "lenient")]) == 0
    assert "skipped 1 undecodable image(s):" in capsys.readouterr().err


# ----------------------------------------------------------------------------- datasets and files


def csv_data(tmp: Path, rows: list[str], header: str = "path,label", bom: bool = False) -> Path:
    make_class_folder(tmp / "img", per_class=4)
    path = tmp / "data.csv"
    text = "\n".join([header, *rows]) + "\n"
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode())
    return path


def good_rows() -> list[str]:
    return [f"img/{c}/{c}_{i}.png,{c}" for c in ("red", "blue") for i in range(4)]


def npz(tmp: Path, **arrays) -> Path:
    base = {
        "train_images": np.zeros((8, 8, 8), np.uint8),
        "train_labels": np.array([0, 1] * 4).reshape(-1, 1),
    }
    path = tmp / "data.npz"
    np.savez(path, **{**base, **arrays})
    return path


def split_file(
    tmp: Path, data: Path, value: str | None = "tset", header: str = "key,label,class,split"
) -> Path:
    keys = sorted(str(f) for f in data.rglob("*.png"))
    path = tmp / "split.csv"
    lines = [header] + [
        f"{k},0,red,{value if i == 0 else 'train' if i % 3 else 'val'}" for i, k in enumerate(keys)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def symlinked(tmp: Path) -> Path:
    data = make_class_folder(tmp / "d")
    (data / "rouge").symlink_to(data / "red", target_is_directory=True)
    return data


def empty_class(tmp: Path) -> Path:
    data = make_class_folder(tmp / "d")
    (data / "green").mkdir()
    (data / "green" / "notes.txt").write_text("no images here")
    return data


def val_only_class(tmp: Path) -> Path:
    make_class_folder(tmp / "d" / "train")
    make_class_folder(tmp / "d" / "val", classes=("red", "green"), per_class=2)
    return tmp / "d"


def yaml_file(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(text)
    return path


def existing_run(tmp: Path) -> Path:
    (tmp / "run").mkdir()
    return tmp / "run"


def interrupted_run(tmp: Path) -> Path:
    (tmp / "run.incomplete").mkdir()
    return tmp / "run"


def a_file(tmp: Path) -> Path:
    (tmp / "file").write_text("x")
    return tmp / "file" / "run"


D = "{data}"  # replaced by a fresh class folder of the case's own
FIT = {  # id -> (argv builder, expected exit, fragments the one line must hold)
    "missing data": (lambda t: ["fit", str(t / "nope")], 2, ["nope", "does not exist"]),
    "empty folder": (lambda t: ["fit", str((t / "e").mkdir() or t / "e")], 2, ["found 0 images"]),
    "one class": (
        lambda t: ["fit", str(make_class_folder(t / "d", classes=("red",)))],
        2,
        ["only one class"],
    ),
    "class folder without images": (lambda t: ["fit", str(empty_class(t))], 2, ["green", "has no images"]),
    "symlinked class folder": (lambda t: ["fit", str(symlinked(t))], 2, ["rouge", "same folder"]),
    "val class not in train": (lambda t: ["fit", str(val_only_class(t))], 2, ["green", "not in"]),
    "text data file": (lambda t: ["fit", str((t / "d.txt").write_text("x") and t / "d.txt")], 2, [".txt"]),
    "csv no header": (lambda t: ["fit", str(csv_data(t, good_rows(), header="a,b"))], 2, ["path,label"]),
    "csv no rows": (lambda t: ["fit", str(csv_data(t, []))], 2, ["no rows"]),
    "csv empty label": (
        lambda t: ["fit", str(csv_data(t, [*good_rows(), "img/red/red_0.png,"]))],
        2,
        ["label is empty"],
    ),
    "csv duplicate, conflicting": (
        lambda t: ["fit", str(csv_data(t, [*good_rows()[1:], "img/red/red_1.png,blue"]))],
        2,
        ["red_1.png", "listed twice"],
    ),
    "csv duplicate, same label": (
        lambda t: ["fit", str(csv_data(t, [*good_rows(), "img/red/red_0.png,red"]))],
        2,
        ["red_0.png", "lines 2 and 10"],
    ),
    "csv missing image": (
        lambda t: ["fit", str(csv_data(t, [*good_rows(), "img/x.png,red"]))],
        2,
        ["img/x.png"],
    ),
    "csv unknown split": (
        lambda t: ["fit", str(csv_data(t, [r + ",tset" for r in good_rows()], header="path,label,split"))],
        2,
        ["'tset'", "line 2"],
    ),
    "csv some splits": (
        lambda t: [
            "fit",
            str(
                csv_data(
                    t, [good_rows()[0] + ",train", *[r + "," for r in good_rows()[1:]]], "path,label,split"
                )
            ),
        ],
        2,
        ["some items have a split"],
    ),
    "csv one class": (
        lambda t: ["fit", str(csv_data(t, [r.split(",")[0] + ",red" for r in good_rows()]))],
        2,
        ["one class"],
    ),
    "npz fewer labels": (
        lambda t: ["fit", str(npz(t, train_labels=np.zeros(5, int)))],
        2,
        ["8 images but", "5 labels"],
    ),
    "npz float images": (
        lambda t: ["fit", str(npz(t, train_images=np.zeros((8, 8, 8), np.float32)))],
        2,
        ["float32", "uint8"],
    ),
    "npz wrong shape": (
        lambda t: ["fit", str(npz(t, train_images=np.zeros((8, 8), np.uint8)))],
        2,
        ["shape (8, 8)"],
    ),
    "npz 5 channels": (
        lambda t: ["fit", str(npz(t, train_images=np.zeros((8, 8, 8, 5), np.uint8)))],
        2,
        ["(8, 8, 8, 5)"],
    ),
    "npz float labels": (
        lambda t: ["fit", str(npz(t, train_labels=np.zeros(8, np.float32)))],
        2,
        ["train_labels", "integers"],
    ),
    "npz negative labels": (lambda t: ["fit", str(npz(t, train_labels=-np.ones(8, int)))], 2, ["negative"]),
    "npz label gap": (
        lambda t: ["fit", str(npz(t, train_labels=np.array([0, 2] * 4)))],
        2,
        ["1 have no images"],
    ),
    "npz missing labels": (
        lambda t: ["fit", str(npz(t, val_images=np.zeros((2, 8, 8), np.uint8)))],
        2,
        ["no val_labels"],
    ),
    "npz no train keys": (lambda t: ["fit", str(_other_npz(t))], 2, ["train_images", "found other"]),
    "npz pickled objects": (
        lambda t: ["fit", str(npz(t, train_labels=np.array([object()] * 8)))],
        2,
        ["cannot read"],
    ),
    "npz random bytes": (
        lambda t: ["fit", str((t / "r.npz").write_bytes(os.urandom(64)) and t / "r.npz")],
        2,
        ["r.npz"],
    ),
    "npz single array": (lambda t: ["fit", str(_npy_as_npz(t))], 2, ["one array"]),
    "split file unknown value": (
        lambda t: ["fit", D, "--split-file", str(split_file(t, t / "data"))],
        2,
        ["'tset'"],
    ),
    "split file no split column": (
        lambda t: ["fit", D, "--split-file", str(split_file(t, t / "data", header="key,label,class,part"))],
        2,
        ["columns key and split"],
    ),
    "split file missing": (lambda t: ["fit", D, "--split-file", str(t / "none.csv")], 2, ["none.csv"]),
    "split file for other data": (
        lambda t: ["fit", D, "--split-file", str(csv_data(t, ["a,train"], header="key,split"))],
        2,
        ["does not list"],
    ),
    "yaml syntax": (
        lambda t: ["fit", D, "--config", str(yaml_file(t, "data: [oops\n"))],
        2,
        ["not valid YAML"],
    ),
    "yaml not a mapping": (lambda t: ["fit", D, "--config", str(yaml_file(t, "- 1\n"))], 2, ["mapping"]),
    "yaml unknown key": (lambda t: ["fit", D, "--config", str(yaml_file(t, "lrr: 1\n"))], 2, ["lrr"]),
    "yaml wrong type": (
        lambda t: ["fit", D, "--config", str(yaml_file(t, "data:\n  batch_size: big\n"))],
        2,
        ["batch_size"],
    ),
    "yaml inf warmup": (
        lambda t: ["fit", D, "--config", str(yaml_file(t, "phase2:\n  warmup_epochs: .inf\n"))],
        2,
        ["warmup_epochs = inf"],
    ),
    "yaml nan lr": (lambda t: ["fit", D, "--config", str(yaml_file(t, "lr: .nan\n"))], 2, ["lr = nan"]),
    "yaml missing": (lambda t: ["fit", D, "--config", str(t / "none.yaml")], 2, ["none.yaml"]),
    "flag nan lr-ratio": (lambda t: ["fit", D, "--lr-ratio", "nan"], 2, ["lr_ratio = nan", "--lr-ratio"]),
    "flag inf weight decay": (
        lambda t: ["fit", D, "--phase2-weight-decay", "inf"],
        2,
        ["weight_decay = inf"],
    ),
    "flag negative seed": (lambda t: ["fit", D, "--seed", "-1"], 2, ["--seed -1"]),
    "flag huge seed": (lambda t: ["fit", D, "--seed", str(2**40)], 2, ["2**32"]),
    "flag negative workers": (lambda t: ["fit", D, "--workers", "-3"], 2, ["--workers -3"]),
    "flag image size": (lambda t: ["fit", D, "--image-size", "5"], 2, ["--image-size 5"]),
    "flag unfreeze": (lambda t: ["fit", D, "--unfreeze", "zero"], 2, ["'zero'"]),
    "flag batch size": (lambda t: ["fit", D, "--batch-size", "0"], 2, ["--batch-size 0"]),
    "flag fractions": (
        lambda t: ["fit", D, "--val-fraction", "0.6", "--test-fraction", "0.5"],
        2,
        ["sum < 1"],
    ),
    "flag nothing to train": (
        lambda t: ["fit", D, "--phase1-epochs", "0", "--phase2-epochs", "0"],
        2,
        ["both 0"],
    ),
    "flag unknown model": (lambda t: ["fit", D, "--model", "resnet1"], 2, ["resnet1"]),
    "out is a finished run": (lambda t: ["fit", D, "--out", str(existing_run(t))], 2, ["already exists"]),
    "out is interrupted": (lambda t: ["fit", D, "--out", str(interrupted_run(t))], 2, ["thaw resume"]),
    "out inside data": (
        lambda t: ["fit", D, "--out", str(t / "data" / "runs" / "x")],
        2,
        ["inside the data folder"],
    ),
    "out not writable": (lambda t: ["fit", D, "--out", str(a_file(t))], 2, ["cannot create the run folder"]),
    "resume nothing": (lambda t: ["resume", str(t / "none")], 2, ["no interrupted run"]),
}


def _other_npz(tmp: Path) -> Path:
    np.savez(tmp / "o.npz", other=np.zeros(3))
    return tmp / "o.npz"


def _npy_as_npz(tmp: Path) -> Path:
    np.save(tmp / "one.npy", np.zeros(3))
    (tmp / "one.npy").rename(tmp / "one.npz")
    return tmp / "one.npz"


@pytest.mark.parametrize("case", list(FIT))
def test_fit_refuses_bad_input(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)  # a case that wrongly trains leaves its runs/ here
    build, code, fragments = FIT[case]
    data = make_class_folder(tmp_path / "data", per_class=4)
    argv = [str(data) if a == D else a for a in build(tmp_path)]
    if argv[0] == "fit":  # the case's own flags last: they win
        epochs = [] if "--phase1-epochs" in argv else ["--phase1-epochs", "1", "--phase2-epochs", "0"]
        argv = [*argv[:2], *FAST, *epochs, *argv[2:]]
    assert main(argv) == code
    out, err = capsys.readouterr()
    one_line(err)
    for fragment in fragments or []:
        assert fragment in err, (fragment, err)
    assert not [p for p in tmp_path.rglob("summary.json")]  # nothing that looks like a finished run


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thaw: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_did_you_mean_names_each_model_once(tmp_path, capsys):
    assert (
        main(["fit", str(make_class_folder(tmp_path / "d")), "--model", "resnet1", "--weights", "none"]) == 2
    )
    err = one_line(capsys.readouterr().err)
    names = err.split("did you mean ")[1].split("?")[0].split(", ")
    assert len(names) == len(set(names))


def test_default_run_folder_never_lands_inside_data(tmp_path, capsys, monkeypatch):
    data = make_class_folder(tmp_path / "d")
    monkeypatch.chdir(data)
    assert main(["fit", ".", *TINY]) == 2
    assert "inside the data folder" in one_line(capsys.readouterr().err)
    assert not (data / "runs").exists()


def test_discovery_accepts_what_it_should(tmp_path):
    from thaw.config import DataConfig
    from thaw.data.sources import discover

    bom = csv_data(tmp_path, good_rows(), bom=True)
    assert len(discover(DataConfig(path=str(bom))).items) == 8  # Excel's byte-order mark
    rows = [r + ("," + ("Train" if i % 2 else "VALID")) for i, r in enumerate(good_rows())]
    given = csv_data(tmp_path / "b", rows, header="path,label,split")
    assert {it.split for it in discover(DataConfig(path=str(given))).items} == {"train", "val"}


# ----------------------------------------------------------------------------- model and weights files


def copy_run(run: Path, tmp: Path) -> Path:
    import shutil

    return Path(shutil.copytree(run, tmp / "copy"))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def poison(path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(path), metadata=meta)


def no_metadata(path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(path))


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-10] ^= 0xFF
    path.write_bytes(bytes(raw))


MODEL_FILES = {
    "truncated": (truncate, ["not a readable safetensors file"]),
    "text": (lambda p: p.write_text("hello"), ["not a readable safetensors file"]),
    "zero bytes": (lambda p: p.write_bytes(b""), ["not a readable safetensors file"]),
    "no thaw metadata": (no_metadata, ["not a thaw model file"]),
    "non-finite weights": (poison, ["non-finite weights"]),
    "changed after the run": (flip_a_byte, ["has changed since the run wrote it"]),
    "missing": (lambda p: p.unlink(), ["no model file"]),
}


@pytest.mark.parametrize("case", list(MODEL_FILES))
def test_predict_and_evaluate_refuse_a_bad_model_file(trained, tmp_path, capsys, case):
    data, run = trained
    damage, fragments = MODEL_FILES[case]
    copy = copy_run(run, tmp_path)
    if case != "changed after the run":  # load's own checks, with no recorded sha256 to compare
        (copy / "summary.json").unlink()
    damage(copy / "model.safetensors")
    for argv in (["predict", str(copy), str(data)], ["evaluate", str(copy)]):
        assert main(argv) == 2
        err = one_line(capsys.readouterr().err)
        assert all(f in err for f in fragments), err
        assert "model.safetensors" in err


def state_file(tmp: Path, name: str, state) -> Path:
    path = tmp / name
    torch.save(state, path)
    return path


def resnet_state() -> dict:
    from torchvision.models import resnet18

    return resnet18().state_dict()


WEIGHT_FILES = {
    "evil pickle": (lambda t, evil: evil, "resnet18", ["without running code"]),
    "truncated pth": (
        lambda t, evil: (p := state_file(t, "r.pth", resnet_state()), truncate(p))[0],
        "resnet18",
        ["r.pth"],
    ),
    "text as safetensors": (
        lambda t, evil: (t / "w.safetensors").write_text("x") and t / "w.safetensors",
        "resnet18",
        ["w.safetensors"],
    ),
    "wrong architecture": (
        lambda t, evil: state_file(t, "r.pth", resnet_state()),
        "mobilenet_v3_small",
        ["does not fit", "--model"],
    ),
    "not a state dict": (lambda t, evil: state_file(t, "l.pth", [1, 2, 3]), "resnet18", ["no state dict"]),
    "non-finite": (
        lambda t, evil: state_file(
            t, "n.pth", {k: v.float().fill_(float("inf")) for k, v in resnet_state().items()}
        ),
        "resnet18",
        ["NaN or infinite"],
    ),
    "missing": (lambda t, evil: t / "none.pth", "resnet18", ["none.pth"]),
}


@pytest.mark.parametrize("case", list(WEIGHT_FILES))
def test_weights_import_refuses_bad_files(tmp_path, capsys, monkeypatch, evil_pickle, case):
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    build, model, fragments = WEIGHT_FILES[case]
    path = build(tmp_path, evil_pickle)
    assert main(["weights", "import", model, str(path)]) == 2
    out, err = capsys.readouterr()
    assert "pwned" not in out + err
    line = one_line(err)
    assert all(f in line for f in fragments), line
    assert not list((tmp_path / "home").rglob("*.safetensors"))


# ----------------------------------------------------------------------------- results and permissions


def test_evaluate_prints_its_metrics_when_it_cannot_write_them(trained, tmp_path, capsys):
    _, run = trained
    copy = copy_run(run, tmp_path)
    (copy / "evaluations").write_text("a file where the folder should be")
    assert main(["evaluate", str(copy)]) == 2
    out, err = capsys.readouterr()
    assert "accuracy" in out
    assert "the metrics above are not saved" in one_line(err)


def test_evaluate_refuses_unknown_classes(trained, tmp_path, capsys):
    _, run = trained
    other = make_class_folder(tmp_path / "o", classes=("red", "green"), per_class=2)
    assert main(["evaluate", str(run), str(other)]) == 2
    assert "green" in one_line(capsys.readouterr().err)


def test_run_files_follow_the_umask_and_summary_holds_the_sha256(trained):
    from thaw.models.state_dict import sha256

    _, run = trained
    umask = os.umask(0)
    os.umask(umask)
    for name in ("model.safetensors", "summary.json", "config.yaml", "split.csv"):
        assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model_sha256"] == sha256(run / "model.safetensors")


def test_unexpected_error_is_one_line_with_a_debug_hint(trained, monkeypatch, capsys):
    from thaw import predict

    data, run = trained

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(predict.Predictor, "predict_paths", broken)
    assert main(["predict", str(run), str(data)]) == 1
    line = one_line(capsys.readouterr().err)
    assert "RuntimeError: something nobody planned for" in line and "--debug" in line
    with pytest.raises(RuntimeError):
        main(["--debug", "predict", str(run), str(data)])


@pytest.mark.parametrize(
    "argv",
    [
        ["predict", "{copy}", "{data}"],
        ["fit", "{data}", "--config", "{yaml}"],
        ["weights", "import", "resnet18", "{evil}"],
    ],
    ids=["truncated model", "bad yaml", "evil pickle"],
)
def test_subprocess_shows_no_traceback(trained, tmp_path, evil_pickle, argv):
    data, run = trained
    copy = copy_run(run, tmp_path)
    truncate(copy / "model.safetensors")
    names = {"copy": copy, "data": data, "yaml": yaml_file(tmp_path, "lr: [\n"), "evil": evil_pickle}
    argv = [a.format(**{k: str(v) for k, v in names.items()}) for a in argv]
    env = {**os.environ, "THAW_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "thaw.cli", *argv], capture_output=True, text=True, env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "pwned" not in done.stdout
    one_line(done.stderr)
