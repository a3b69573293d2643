"""The bad-input corpus: what a new user feeds thaw, generated, run through fit, evaluate, predict and
weights import. Every case ends in its exit code with one actionable line naming the file or value (or a
warning naming the skipped file), never a traceback, and never a folder that looks like a finished run."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_class_folder, make_image, tiny_config, tiny_flags
from PIL import Image
from zygote import run_thaw

from thaw.cli import main
from thaw.core.errors import ThawError

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
    assert main(["predict", str(run), str(path), "--csv"]) == (4 if skipped else 0)  # 4: none was read
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if skipped:  # named on stderr, and its CSV row has no prediction and says why in the error column
        assert f"could not read 1 file(s): {path}" in err
        row = next(line for line in out.splitlines() if name in line)
        assert row.split(",")[1] == "" and "cannot read image" in row
    else:
        assert out.count(name) == 1 and ",nan" not in out and not err


def test_sixteen_bit_keeps_its_range_and_strips_are_bounded(tmp_path):
    from thaw.core.decoding import MAX_ASPECT
    from thaw.data.decoded import open_image
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
    "yaml syntax has its line": (
        lambda t: ["fit", D, "--config", str(yaml_file(t, "lr: 0.1\ndata: [oops\nseed: 1\n"))],
        2,
        ["not valid YAML at line 3"],
    ),
    "yaml duplicate key": (
        lambda t: ["fit", D, "--config", str(yaml_file(t, "lr: 0.1\nseed: 2\nlr: 0.2\n"))],
        2,
        ["'lr' appears twice (lines 1 and 3)"],
    ),
    "yaml duplicate nested key": (
        lambda t: ["fit", D, "--config", str(yaml_file(t, "data:\n  batch_size: 4\n  batch_size: 8\n"))],
        2,
        ["'batch_size' appears twice"],
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
    from thaw.core.config import DataConfig
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
    from thaw.use import predictor

    data, run = trained

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody planned for\nsecond line")

    monkeypatch.setattr(predictor.Predictor, "predict_paths", broken)
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
    done = run_thaw(argv, env=env)  # its own process, forked from a preloaded one (tests/zygote.py)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "pwned" not in done.stdout
    one_line(done.stderr)


# ----------------------------------------------------------------------------- model files check themselves


def rewrite_metadata(path: Path, change, resign: bool = True) -> None:
    """Rewrite the thaw metadata of a model file with ``change(meta)`` applied; the tensors stay. With
    ``resign`` the file's digest is recomputed, as a forger would: the checks behind the digest still hold."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["thaw"])
    change(meta)
    if resign and "sha256" in meta:  # the digest the file carries, recomputed
        from thaw.models.model_file import content_sha256

        meta["sha256"] = content_sha256(meta)
    save_file(load_file(str(path)), str(path), metadata={"thaw": json.dumps(meta)})


def retrain_a_tensor(path: Path) -> None:
    """Other values in one tensor, the metadata (and its recorded sha256) as it was: a spliced file."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state["head.1.bias"] = state["head.1.bias"] + 1.0
    save_file(state, str(path), metadata=meta)


LONE_FILES = {  # id -> (damage to the file copied on its own, fragments of the one line)
    "one name for two outputs": (
        lambda p: rewrite_metadata(p, lambda m: m.update(class_names=["red"])),
        ["1 class name(s)", "2 outputs"],
    ),
    "three names for two outputs": (
        lambda p: rewrite_metadata(p, lambda m: m.update(class_names=["red", "blue", "green"])),
        ["3 class name(s)", "2 outputs"],
    ),
    "repeated names": (
        lambda p: rewrite_metadata(p, lambda m: m.update(class_names=["red", "red"])),
        ["repeat"],
    ),
    "head and spec disagree": (
        lambda p: rewrite_metadata(p, lambda m: m["spec"].update(num_classes=3)),
        ["2 outputs", "says 3"],
    ),
    "task contradicts the spec": (
        lambda p: rewrite_metadata(p, lambda m: m.update(task="multilabel")),
        ["task 'multilabel'"],
    ),
    "preprocessing of another channel count": (
        lambda p: rewrite_metadata(p, lambda m: m["preprocessing"].update(mean=[0.5])),
        ["preprocessing", "3-channel"],
    ),
    "zero std": (
        lambda p: rewrite_metadata(p, lambda m: m["preprocessing"].update(std=[0.2, 0.0, 0.2])),
        ["preprocessing"],
    ),
    "tensors changed, metadata kept": (retrain_a_tensor, ["sha256", "its own metadata"]),
}


@pytest.mark.parametrize("case", list(LONE_FILES))
def test_a_copied_model_file_checks_itself(trained, tmp_path, capsys, case):
    import shutil

    data, run = trained
    damage, fragments = LONE_FILES[case]
    lone = tmp_path / "model.safetensors"  # no summary.json or config.yaml beside it
    shutil.copyfile(run / "model.safetensors", lone)
    damage(lone)
    assert main(["predict", str(lone), str(data / "red" / "red_0.png"), "--csv"]) == 2
    out, err = capsys.readouterr()
    assert not out  # no prediction at all, right or wrong
    line = one_line(err)
    assert all(f in line for f in fragments) and str(lone) in line, line


def test_model_file_records_its_tensors_sha256_and_task(trained, tmp_path):
    from safetensors import safe_open

    from thaw.models.model_file import tensors_sha256

    _, run = trained
    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["thaw"])
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["tensors_sha256"] == tensors_sha256(state) and meta["task"] == "single-label"
    state["head.1.bias"] = state["head.1.bias"].clone() + 1e-6
    assert tensors_sha256(state) != meta["tensors_sha256"]


# ----------------------------------------------------------------------------- exit codes scripts rely on


def test_predict_exit_codes_say_whether_all_some_or_no_images_were_read(trained, tmp_path, capsys):
    from thaw.core.errors import NONE_READ, SOME_FAILED

    data, run = trained
    good = data / "red" / "red_0.png"
    bad = tmp_path / "zero.jpg"
    bad.write_bytes(b"")
    text = tmp_path / "text.png"
    text.write_text("not an image")
    assert main(["predict", str(run), str(good), "--csv"]) == 0
    assert main(["predict", str(run), str(good), str(bad), "--csv"]) == SOME_FAILED == 3
    assert main(["predict", str(run), str(bad), str(text), "--jsonl"]) == NONE_READ == 4
    out = capsys.readouterr().out
    assert out.count('"error": "cannot read image') == 2  # every failed file still has its row


def test_evaluate_exit_codes(trained, tmp_path, capsys):
    import shutil

    data, run = trained
    some = tmp_path / "some"
    shutil.copytree(data, some)
    (some / "red" / "red_0.png").write_bytes(b"")
    assert main(["evaluate", str(run), str(some)]) == 3
    assert "skipped 1 undecodable" in capsys.readouterr().err
    none = tmp_path / "none"
    for f in data.rglob("*.png"):
        (none / f.relative_to(data)).parent.mkdir(parents=True, exist_ok=True)
        (none / f.relative_to(data)).write_text("text")
    assert main(["evaluate", str(run), str(none)]) == 4
    assert "none of the" in one_line(capsys.readouterr().err)


def test_embed_exit_codes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    data = make_class_folder(tmp_path / "d", per_class=6)
    flags = ["--model", "mobilenet_v3_small", "--weights", "none", "--image-size", "32"]
    assert main(["embed", str(data), *flags, "--out", str(tmp_path / "all.npz")]) == 0
    (data / "red" / "red_0.png").write_bytes(b"")
    assert main(["embed", str(data), *flags, "--out", str(tmp_path / "some.npz")]) == 3
    assert np.load(tmp_path / "some.npz")["features"].shape[0] == 11
    for f in data.rglob("*.png"):
        f.write_text("text")
    assert main(["embed", str(data), *flags, "--out", str(tmp_path / "none.npz")]) == 4
    assert "could be decoded" in capsys.readouterr().err.splitlines()[-1]


# ----------------------------------------------------------------------------- ONNX and huge images


def test_onnx_predict_gives_an_oversized_image_its_error_row_and_goes_on(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    data, run = trained
    onnx = tmp_path / "model.onnx"
    assert main(["export", str(run), "--out", str(onnx), "--no-check"]) == 0
    bomb_png(tmp_path / "bomb.png")
    (tmp_path / "zero.jpg").write_bytes(b"")
    good = data / "red" / "red_0.png"
    capsys.readouterr()
    argv = [str(tmp_path / "bomb.png"), str(good), str(tmp_path / "zero.jpg"), "--csv"]
    assert main(["predict", str(onnx), *argv]) == 3
    rows = {r.split(",")[0]: r for r in capsys.readouterr().out.splitlines()[1:]}
    assert rows[str(good)].split(",")[1] in ("red", "blue")
    assert (
        "too large to decode" in rows[str(tmp_path / "bomb.png")]
        and "cannot read" in rows[str(tmp_path / "zero.jpg")]
    )
    assert main(["predict", str(run), *argv]) == 3  # the PyTorch path: the same rows
    torch_rows = {r.split(",")[0]: r for r in capsys.readouterr().out.splitlines()[1:]}
    assert torch_rows[str(tmp_path / "bomb.png")].endswith(rows[str(tmp_path / "bomb.png")].split(",")[-1])


def big_png(path: Path, size: int = 7000) -> None:
    """A 49-megapixel greyscale gradient, small on disk."""
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    Image.fromarray(np.tile(ramp, (size, 1))).save(path, optimize=False, compress_level=1)


def test_huge_images_decode_reduced_without_pillow_warnings(tmp_path, recwarn):
    from thaw.core.decoding import KEEP, LARGE_PIXELS, read_image

    big_png(tmp_path / "big.png")
    image, _ = read_image(str(tmp_path / "big.png"), 3, target=64)
    assert min(image.size) >= KEEP * 64 and max(image.size) < 7000  # reduced, and enough for the model
    assert abs(np.asarray(image)[:, :, 0].mean() - 127.5) < 3  # the same picture
    rgb = Image.new("RGB", (7200, 7200), (30, 120, 200))
    rgb.save(tmp_path / "big.jpg", quality=50)
    assert 7200 * 7200 > LARGE_PIXELS
    jpeg, _ = read_image(str(tmp_path / "big.jpg"), 3, target=64)
    assert min(jpeg.size) >= KEEP * 64 and jpeg.size[0] <= 7200 // 8 + 1  # decoded at 1/8 scale
    assert abs(np.asarray(jpeg).astype(int).mean(axis=(0, 1)) - (30, 120, 200)).max() < 6
    full, _ = read_image(str(tmp_path / "big.png"), 3)  # no target: as it is
    assert full.size == (7000, 7000)
    assert not [w for w in recwarn if "DecompressionBomb" in type(w.message).__name__]


def test_normal_size_images_decode_exactly_as_before(tmp_path):
    from PIL import ImageOps

    from thaw.core.decoding import read_image

    make_image(tmp_path / "a.png", (200, 30, 30), 3, size=300)
    exif_rotated(tmp_path / "b.jpg")
    for name in ("a.png", "b.jpg"):
        with Image.open(tmp_path / name) as img:
            before = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        assert np.array_equal(np.asarray(read_image(str(tmp_path / name), 3, target=36)[0]), before)


# ----------------------------------------------------------------------------- errors before any run folder

BEFORE_FOLDER = {  # id -> (flags, fragments of the one line)
    "unknown model": (["--model", "resnet19"], ["resnet19", "did you mean"]),
    "unknown weights name": (["--weights", "BOGUS"], ["--weights 'BOGUS'", "DEFAULT"]),
    "missing weights file": (["--weights", "nowhere/w.pth"], ["nowhere/w.pth", "no such file"]),
    "batch norm on batches of one": (
        ["--batch-size", "1", "--bn-policy", "train", "--phase2-epochs", "1"],
        ["--batch-size 1", "batches of 2 or more"],
    ),
}


@pytest.mark.parametrize("case", list(BEFORE_FOLDER))
def test_errors_found_before_training_leave_no_run_folder(tmp_path, capsys, case):
    flags, fragments = BEFORE_FOLDER[case]
    data = make_class_folder(tmp_path / "d", per_class=4)
    out = tmp_path / "out" / "a9"
    argv = [
        "fit",
        str(data),
        *FAST,
        "--phase1-epochs",
        "1",
        "--phase2-epochs",
        "0",
        *flags,
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert all(f in line for f in fragments), line
    assert "thaw resume" not in line and not (tmp_path / "out").exists()


def test_batch_norm_on_batches_of_one_is_held_for_the_default_and_refused_when_named(tmp_path):
    from thaw.core.config import override
    from thaw.core.strategies import plans_for
    from thaw.train.preflight import check_run

    config = override(
        tiny_config(tmp_path / "d", tmp_path / "out"), {"data.batch_size": 1, "phase2.epochs": 1}
    )
    assert config.bn_policy == "matched"  # the default
    said = []
    held, plans = check_run(config, plans_for(config), ["a", "b"], False, said.append)
    assert held.bn_policy == "frozen" and {p.bn_policy for p in plans} == {"frozen"}
    assert len(said) == 1 and "--batch-size 1" in said[0] and "held" in said[0]
    frozen = override(config, {"bn_policy": "frozen"})
    assert check_run(frozen, plans_for(frozen), ["a", "b"], False, said.append)[0] == frozen
    assert len(said) == 1  # nothing to say: batch norm stays in eval mode
    # batches of 7 are still held; from 8 the default trains batch norm as it is
    seven = override(config, {"data.batch_size": 7})
    assert check_run(seven, plans_for(seven), ["a", "b"], False, said.append)[0].bn_policy == "frozen"
    assert len(said) == 2 and "on batches of 8 or more" in said[1]
    eight = override(config, {"data.batch_size": 8})
    assert check_run(eight, plans_for(eight), ["a", "b"], False, said.append)[0].bn_policy == "matched"
    assert len(said) == 2
    train = override(config, {"bn_policy": "train"})  # named by the user: refused, with the way out
    with pytest.raises(ThawError, match="batches of 2 or more images; give --batch-size 2"):
        check_run(train, plans_for(train), ["a", "b"], False)


def test_an_out_that_appears_while_training_is_named_and_not_resumed(tmp_path, capsys, monkeypatch):
    from thaw.use import run as recipe

    data = make_class_folder(tmp_path / "d", per_class=6)
    out = tmp_path / "fc"
    real = recipe.write_report

    def appear(path, **kwargs):  # someone else writes --out while this run is finishing
        (out / "theirs").mkdir(parents=True)
        return real(path, **kwargs)

    monkeypatch.setattr(recipe, "write_report", appear)
    assert main(["fit", str(data), *TINY, "--out", str(out)]) == 2
    err = capsys.readouterr().err  # the run's warnings (too few validation images for a threshold), then:
    (line,) = [line for line in err.splitlines() if line.startswith("thaw: error: ")]
    assert "Traceback" not in err
    assert f"{out} appeared while this run trained" in line and f"mv {out}.incomplete" in line
    assert "thaw resume" not in line and (out / "theirs").is_dir()
    assert (tmp_path / "fc.incomplete" / "model.safetensors").is_file()  # the finished run is kept
    assert main(["resume", str(tmp_path / "fc.incomplete")]) == 2
    assert f"{out} exists beside" in one_line(capsys.readouterr().err)


# ----------------------------------------------------------------------------- the binary decision, shown


class Fixed(torch.nn.Module):
    """A two-class model whose p_1 is an image's mean pixel / 255: its scores are what the test says."""

    class_names = ["cat", "dog"]
    multilabel = False

    def forward(self, x):
        p1 = x.float().mean(dim=(1, 2, 3)).clamp(0, 1)
        return torch.stack([1 - p1, p1], dim=1).log()

    def probabilities(self, logits):
        return logits.softmax(dim=1)


def scored(values: list[float], labels: list[int]):
    from thaw.data.decoded import Decoded

    images = [torch.full((3, 8, 8), int(v * 255), dtype=torch.uint8) for v in values]
    return Decoded([str(i) for i in range(len(values))], images, labels)


@pytest.mark.parametrize("per_class, chosen", [(2, False), (4, False), (5, True)])
def test_threshold_needs_enough_validation_images_of_each_class(per_class, chosen):
    from thaw.core.preprocessing import Preprocessing
    from thaw.train.probabilities import view_probabilities
    from thaw.use.operating_point import MIN_PER_CLASS, operating_point

    assert MIN_PER_CLASS == 5
    pre = Preprocessing(8, 8, (0.0,) * 3, (1.0 / 255,) * 3)  # the crop's values stay the pixel values
    rng = np.random.default_rng(per_class)
    cats, dogs = rng.uniform(0.0, 0.5, 20), rng.uniform(0.9, 1.0, per_class)
    val = scored([*cats, *dogs], [0] * 20 + [1] * per_class)
    scores = {"val": (view_probabilities(Fixed(), val.images, pre, False), torch.tensor(val.labels))}
    operating = operating_point(scores, Fixed.class_names, False, False, None)
    if chosen:
        assert operating.threshold is not None and operating.rule == "Youden's J on validation"
    else:
        assert operating.threshold is None
        assert operating.rule.startswith(f"argmax: validation has {per_class} image(s) of dog, too few")


def test_predict_shows_the_threshold_and_the_rule(trained, tmp_path, capsys):
    """The threshold is the model file's own (under its digest, written from the run's operating point):
    an edit of summary.json's threshold changes nothing; the file alone keeps its threshold."""
    from thaw.models.state_dict import sha256

    data, run = trained
    copy = copy_run(run, tmp_path)
    image = str(data / "red" / "red_0.png")
    summary = json.loads((copy / "summary.json").read_text())
    summary["operating"] = {**(summary.get("operating") or {}), "threshold": 0.5, "rule": "edited"}
    (copy / "summary.json").write_text(json.dumps(summary))
    assert main(["predict", str(copy), image, "--csv"]) == 0
    assert "edited" not in capsys.readouterr().err  # the file's own operating point decides
    operating = {"threshold": 0.997, "thresholds": None, "rule": "Youden's J on validation"}
    rewrite_metadata(copy / "model.safetensors", lambda m: m.update(operating=operating))  # as fit writes it
    summary["model_sha256"] = sha256(copy / "model.safetensors")
    (copy / "summary.json").write_text(json.dumps(summary))
    (copy / "MODEL_CARD.md").unlink()  # it vouches for the file fit wrote, which this one no longer is
    assert main(["predict", str(copy), image, "--csv"]) == 0
    out, err = capsys.readouterr()
    assert err.strip() == (
        "note: decision: red where p_red >= 0.997, else blue (threshold by Youden's J on validation; "
        "not the argmax)"
    )
    assert main(["predict", str(copy), image]) == 0
    assert "decision: red where p_red >= 0.997" in " ".join(capsys.readouterr().out.split())
    (copy / "summary.json").unlink()  # a model file alone: its own threshold, and a word on the check
    assert main(["predict", str(copy), image, "--csv"]) == 0
    err = capsys.readouterr().err
    assert "p_red >= 0.997" in err and "no summary.json beside" in err, err


# ----------------------------------------------------------------------------- smaller edges


def test_a_split_file_with_relative_keys_fits_the_same_data_by_absolute_path(tmp_path, monkeypatch):
    from thaw.core.config import DataConfig
    from thaw.data.sources import discover, write_split

    monkeypatch.chdir(tmp_path)
    make_class_folder(tmp_path / "d", per_class=5)
    relative = discover(DataConfig(path="d"))
    write_split(relative, tmp_path / "split.csv")
    assert not relative.items[0].key.startswith("/")
    absolute = discover(DataConfig(path=str(tmp_path / "d"), split_file=str(tmp_path / "split.csv")))
    by_name = {Path(it.key).name: it.split for it in relative.items}
    assert {Path(it.key).name: it.split for it in absolute.items} == by_name
    again = discover(DataConfig(path="d", split_file=str(tmp_path / "split.csv")))  # and the other way
    assert {Path(it.key).name: it.split for it in again.items} == by_name


def test_embed_names_no_flag_it_lacks_when_the_cache_cannot_be_written(tmp_path, capsys, monkeypatch):
    (tmp_path / "home").write_text("a file where THAW_HOME's folder should be")
    monkeypatch.setenv("THAW_HOME", str(tmp_path / "home"))
    data = make_class_folder(tmp_path / "d", per_class=6)
    flags = ["--model", "mobilenet_v3_small", "--weights", "none", "--image-size", "32"]
    assert main(["embed", str(data), *flags, "--out", str(tmp_path / "e.npz")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "THAW_HOME" in line and "--phase1" not in line


def test_evaluation_data_takes_builtin_datasets_as_fit_does():
    """``thaw evaluate RUN builtin:digits`` on a run trained elsewhere: the built-in images (no split of
    their own, so every one), not "data path does not exist"."""
    from thaw.data.sources import evaluation_items

    items, split, names = evaluation_items("builtin:digits")
    assert split == "all" and len(names) == 10 and len(items) == 1797


def test_a_log_file_gets_epoch_lines_not_progress_bar_fragments(tmp_path, capsys):
    """Output that is not a terminal (a pipe, a log file, captured here) gets one line per epoch and no
    progress bar, whose redraws would leave fragments such as ``train_loss: 0.466`` in the log."""
    from conftest import make_class_folder, tiny_config

    import thaw

    data = make_class_folder(tmp_path / "data", per_class=6)
    thaw.fit(tiny_config(data, tmp_path / "run"))
    out = capsys.readouterr().out
    assert "phase2 epoch   1:" in out
    assert "Epoch 0/" not in out and "train_loss:" not in out and "it/s" not in out


def test_an_undecodable_training_image_is_recorded_in_the_summary(tmp_path):
    """It stays in split.csv (resume checks the split lists every image it finds); summary.json names it."""
    from conftest import make_class_folder, tiny_config

    import thaw

    data = make_class_folder(tmp_path / "data", per_class=8)
    (data / "red" / "zz-broken.png").write_bytes(b"not a png")
    summary = thaw.fit(tiny_config(data, tmp_path / "run"), quiet=True).summary
    assert [Path(k).name for k in summary.skipped_images] == ["zz-broken.png"]
    assert "zz-broken.png" in (tmp_path / "run" / "split.csv").read_text()


# ----------------------------------------------------------------------- trust at the new edges (issue 29)


class _Marker:
    """A pickled field whose unpickling creates the file ``path`` (``open(path, "w")``): code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def litdata_with_a_pickle(root: Path, marker: Path) -> Path:
    """A LitData dataset (train/ and classes.json) whose ``meta`` field LitData stores with pickle."""
    from litdata.streaming.writer import BinaryWriter

    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(png, format="png")
    for split in ("train", "val", "test"):
        writer = BinaryWriter(str(root / split), chunk_size=4)
        for i in range(4):
            writer.add_item(i, {"image": png.getvalue(), "label": i % 2, "meta": _Marker(str(marker))})
        writer.done()
        writer.merge()
    (root / "classes.json").write_text(json.dumps(["red", "blue"]))
    return root


def test_a_litdata_pickle_runs_nothing_and_is_refused_naming_the_field(tmp_path, capsys):
    marker = tmp_path / "ran"
    lit = litdata_with_a_pickle(tmp_path / "lit", marker)
    assert json.loads((lit / "train" / "index.json").read_text())["config"]["data_format"][2] == "pickle"
    flags = ["--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--image-size", "32"]
    assert main(["embed", str(lit), "--out", str(tmp_path / "e.npz"), *flags]) == 2
    line = one_line(capsys.readouterr().err)
    assert "'meta'" in line and "pickle" in line and "--trust-pickle" in line, line
    assert not marker.exists()  # nothing was unpickled
    from thaw.data.shards import find_litdata

    assert len(find_litdata(str(lit), trust_pickle=True).items) == 12  # trusted: read, and the payload ran
    assert marker.exists()


def shards_of(tmp: Path, per_class: int = 6) -> tuple[Path, Path]:
    data = make_class_folder(tmp / "shapes", per_class=per_class)
    out = tmp / "shards"
    assert main(["shards", str(data), "--out", str(out), "--shard-size", "100"]) == 0
    return data, out


def edit_manifest(out: Path, change) -> None:
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))


def refused(spec: Path) -> str:
    from thaw.data.shards import find

    with pytest.raises(ThawError) as err:
        find(str(spec))
    assert "\n" not in str(err.value)
    return str(err.value)


def test_a_manifest_names_only_files_inside_its_folder(tmp_path):
    _, out = shards_of(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(out / "train-000000.tar", elsewhere / "train-000000.tar")
    edit_manifest(out, lambda m: m["shards"][0].update(file="../elsewhere/train-000000.tar"))
    line = refused(out)
    assert "../elsewhere/train-000000.tar" in line and "not a file inside" in line, line


def test_manifest_offsets_past_the_shard_end_are_refused_before_reading(tmp_path):
    _, out = shards_of(tmp_path)
    size = (out / "train-000000.tar").stat().st_size
    edit_manifest(out, lambda m: m["shards"][0]["samples"][0].__setitem__(2, size + 4096))
    line = refused(out)
    assert "outside the shard" in line and f"({size} bytes)" in line, line


def _tar(path: Path, members: list[tuple[str, bytes | int]]) -> Path:
    """A tar of ``(name, bytes)``; ``(name, N)`` writes a header claiming N bytes and no data."""
    import tarfile

    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = data if isinstance(data, int) else len(data)
            tar.addfile(info, None if isinstance(data, int) else io.BytesIO(data))
    return path


def test_a_sample_key_twice_in_one_tar_names_both_members(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="png")
    shard = _tar(
        tmp_path / "train-000000.tar",
        [
            ("a.png", png.getvalue()),
            ("a.cls", b"0"),
            ("b.png", png.getvalue()),
            ("b.cls", b"1"),
            ("a.jpg", png.getvalue()),
        ],
    )
    line = refused(shard)
    assert "a.png" in line and "a.jpg" in line and "two images" in line, line


def test_a_member_larger_than_its_file_is_refused_at_once(tmp_path):
    import time

    shard = _tar(tmp_path / "train-000000.tar", [("a.cls", b"0"), ("a.png", 1 << 40)])
    start = time.perf_counter()
    line = refused(shard)
    assert time.perf_counter() - start < 5, "read toward the claimed end instead of refusing the header"
    assert "a.png" in line and str(1 << 40) in line and "past the end" in line, line


def test_classes_json_with_a_repeated_name_is_refused_before_any_run_folder(tmp_path, capsys):
    _, out = shards_of(tmp_path)
    (out / "classes.json").write_text(json.dumps(["red", "red"]))
    run = tmp_path / "runs" / "r"
    assert main(["fit", str(out), *TINY, "--out", str(run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "classes.json" in line and "'red'" in line and "twice" in line, line
    assert not (tmp_path / "runs").exists()


def test_thaw_shards_refuses_an_out_inside_its_data(tmp_path, capsys):
    data = make_class_folder(tmp_path / "shapes", per_class=6)
    assert main(["shards", str(data), "--out", str(data / "shards")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "inside the data" in line and str(data) in line, line
    assert not (data / "shards").exists() and not list(data.glob(".shards*"))


def test_plans_numbers_follow_config_yaml_rules(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=2)
    plans, config = tmp_path / "plans.yaml", tmp_path / "config.yaml"
    plans.write_text("- {name: p1, train: head, features: cached}\n- {name: p2, train: all, lr: 1e-3}\n")
    config.write_text("lr: 1e-3\nphase2:\n  weight_decay: 1e-2\n")
    assert main(["fit", str(data), "--plans", str(plans), "--config", str(config), "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "lr: 0.001" in printed and "lr: 0.001" in printed.split("plans:")[1], printed


def test_ten_thousand_plans_are_refused_in_one_line(tmp_path, capsys):
    data = make_class_folder(tmp_path / "d", per_class=6)
    plans = yaml_file(tmp_path, "".join(f"- {{name: p{i}, train: head}}\n" for i in range(10_000)))
    assert main(["fit", str(data), "--plans", str(plans), "--out", str(tmp_path / "run")]) == 2
    line = one_line(capsys.readouterr().err)
    assert "10000 plans" in line and "cap of 50" in line, line
    assert not (tmp_path / "run").exists()


# nine levels of nine aliases each: 9^9 values once expanded, as the repr of an error message would
LAUGHS = (
    "[&a [x, x, x, x, x, x, x, x, x], "
    + ", ".join(f"&{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8))
    + "]"
)
BOMBS = {"--config": f"data:\n  path: {LAUGHS}\n", "--plans": f"- name: {LAUGHS}\n  train: head\n"}


@pytest.mark.parametrize("flag", list(BOMBS))
def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path, capsys, flag):
    import time

    data = make_class_folder(tmp_path / "d", per_class=6)
    bomb = yaml_file(tmp_path, BOMBS[flag])
    start = time.perf_counter()
    assert main(["fit", str(data), flag, str(bomb), "--out", str(tmp_path / "r")]) == 2
    assert time.perf_counter() - start < 5
    line = one_line(capsys.readouterr().err)
    assert "aliases" in line, line


TAMPERED = {  # id -> (change to the metadata, re-signed like a forger, fragments of the one line)
    "class names reordered": (lambda m: m["class_names"].reverse(), False, ["metadata", "sha256", "edited"]),
    "threshold edited": (lambda m: m.update(operating={"threshold": 0.01}), False, ["metadata", "edited"]),
    "mean as strings": (
        lambda m: m["preprocessing"].update(mean=["0.5", "0.5", "0.5"]),
        True,
        ["preprocessing", "as numbers"],
    ),
    "a 60000 px resize": (lambda m: m["preprocessing"].update(resize_size=60000), True, ["resize_size <="]),
    "a million class names": (
        lambda m: m.update(class_names=[f"class-{i}" for i in range(10**6)] + [7]),
        True,
        ["class names are not a list", "more characters"],
    ),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_metadata_is_one_readable_line_even_without_summary_json(trained, tmp_path, capsys, case):
    data, run = trained
    change, resign, fragments = TAMPERED[case]
    copy = copy_run(run, tmp_path)
    (copy / "summary.json").write_text("{not json")  # the run's check on the whole file cannot help
    rewrite_metadata(copy / "model.safetensors", change, resign=resign)
    assert main(["predict", str(copy), str(data / "red" / "red_0.png"), "--csv"]) == 2
    out, err = capsys.readouterr()
    assert not out
    line = one_line(err)
    assert all(f in line for f in fragments) and len(line) < 700, line[:2000]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_unreadable_summary_is_said_in_one_line(trained, tmp_path, capsys, command):
    data, run = trained
    copy = copy_run(run, tmp_path)
    (copy / "summary.json").write_text("{not json")
    args = [str(data / "red" / "red_0.png"), "--csv"] if command == "predict" else [str(data)]
    assert main([command, str(copy), *args]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "summary.json is not readable JSON" in warned[0], err
    assert "own digest, which covers its tensors and metadata" in warned[0]


def test_a_model_file_from_before_the_metadata_digest_still_loads_and_says_so(trained, tmp_path, capsys):
    data, run = trained
    lone = tmp_path / "model.safetensors"
    shutil.copyfile(run / "model.safetensors", lone)
    rewrite_metadata(lone, lambda m: [m.pop("sha256"), m.pop("operating")], resign=False)
    assert main(["predict", str(lone), str(data / "red" / "red_0.png"), "--csv"]) == 0
    err = capsys.readouterr().err
    assert "no summary.json beside" in err and "its tensors only" in err, err
