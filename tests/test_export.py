"""Export (ONNX, TorchScript, safetensors) with parity against PyTorch on real images, and prediction:
the ONNX file on onnxruntime without torch, --tta, --top-k, JSON lines, the per-file error column."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_flags

from thaw.cli import main

TINY = [*tiny_flags(48), "--phase1-epochs", "1", "--phase2-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run whose model is then made opinionated, so a parity check means something: random
    backbone weights with default batch-norm statistics give near-constant features, so the statistics
    are measured on the images, and the head is randomised."""
    from conftest import make_class_folder

    from thaw.models import load_model, save_model

    root = tmp_path_factory.mktemp("export")
    data = make_class_folder(root / "shapes", per_class=10, classes=("red", "blue", "green"))
    out = root / "runs" / "shapes"
    assert main(["fit", str(data), *TINY, "--out", str(out)]) == 0
    model = load_model(out)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head[1].weight, std=2.0)
    torch.nn.init.zeros_(model.head[1].bias)  # a bias solved for other features would pick one class
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the images below
    pre = model.preprocessing
    mean, std = torch.tensor(pre.mean).view(1, -1, 1, 1), torch.tensor(pre.std).view(1, -1, 1, 1)
    with torch.no_grad():
        model.train()(torch.from_numpy(model_inputs(out, images_of(data))).sub(mean).div(std))
    save_model(model.eval(), out / "model.safetensors")
    import json

    from thaw.models.state_dict import sha256

    summary = json.loads((out / "summary.json").read_text())  # the model changed on purpose: record it
    summary["model_sha256"] = sha256(out / "model.safetensors")
    (out / "summary.json").write_text(json.dumps(summary))
    from thaw.use.model_card import write_model_card

    write_model_card(out, out.name)  # and in the card, which the predictors check
    return data, out


@pytest.fixture(scope="module")
def onnx_file(run, tmp_path_factory):
    """``thaw export RUN --out model.onnx`` once, with its parity check on the run's own test images."""
    import io
    from contextlib import redirect_stdout

    _, out = run
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["export", str(out), "--out", str(path)]) == 0
    assert "top-1 agreement 100.0%" in buffer.getvalue(), buffer.getvalue()
    return path


def images_of(data: Path) -> list[Path]:
    return sorted(data.rglob("*.png"))


def model_inputs(out: Path, files: list[Path]) -> np.ndarray:
    """What the PyTorch predictor feeds its model, before normalisation: [N, 3, S, S] in [0, 1]."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    from thaw.data.decoded import resized
    from thaw.models import load_model

    pre = load_model(out).preprocessing
    crops = [F.center_crop(resized(Image.open(f).convert("RGB"), pre), [pre.size, pre.size]) for f in files]
    return (torch.stack(crops).float() / 255).numpy()


def parity_reference(out: Path, inputs: np.ndarray) -> torch.Tensor:
    from thaw.models import load_model
    from thaw.use.export import ServingModel

    with torch.no_grad():
        return ServingModel(load_model(out))(torch.from_numpy(inputs))


def plain_inputs(files: list[Path], size: int) -> np.ndarray:
    """[N, 3, size, size] in [0, 1], by Pillow alone (not thaw's preprocessing)."""
    from PIL import Image

    arrays = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2), dtype=np.float32) / 255


def softmax_reference(weights: Path, x: np.ndarray) -> np.ndarray:
    from thaw.models import load_model

    model = load_model(weights).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)  # ImageNet's, as torchvision's MobileNetV3
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return torch.softmax(model((torch.from_numpy(x) - mean) / std), dim=1).numpy()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "safetensors"])
def test_export_matches_pytorch_on_real_images(run, onnx_file, tmp_path, fmt):
    from thaw.use.export import Exported, export_run, parity

    data, out = run
    if fmt == "onnx":
        meta = json.loads(onnx_file.with_name("model.onnx.json").read_text())
        exported = Exported(onnx_file, onnx_file.with_name("model.onnx.json"), meta)
    else:
        exported = export_run(out, fmt, tmp_path / f"model.{fmt}")
    meta = json.loads(exported.metadata_path.read_text())
    assert meta["class_names"] == ["blue", "green", "red"] and meta["preprocessing"]["size"] == 48
    inputs = model_inputs(out, images_of(data))
    assert len({int(p.argmax()) for p in parity_reference(out, inputs)}) > 1  # an opinionated model
    for batch in (inputs[:1], inputs):  # the batch size is dynamic
        check = parity(exported, out, batch)
        assert check.max_abs_diff < 1e-4 and check.top1_agreement == 1.0, check
    # the oracle, outside thaw's parity(): images resized here with Pillow alone, the exported file run by
    # its own runtime, the reference written out as softmax(model((x - mean) / std)) with ImageNet's numbers
    x = plain_inputs(images_of(data), 48)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x})[0]
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(exported.path))(torch.from_numpy(x)).numpy()
    else:
        got = softmax_reference(exported.path, x)
    want = softmax_reference(out / "model.safetensors", x)
    assert np.abs(got - want).max() < 1e-4 and (got.argmax(1) == want.argmax(1)).all()
    assert len(set(want.argmax(1))) > 1
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(exported.path)).metadata_props}
        assert json.loads(props["thaw"]) == meta


def test_export_refuses_an_existing_file_unless_forced(run, tmp_path, capsys):
    _, out = run
    target = tmp_path / "m.safetensors"
    assert main(["export", str(out), "--to", "safetensors", "--out", str(target)]) == 0
    assert main(["export", str(out), "--to", "safetensors", "--out", str(target)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(out), "--to", "safetensors", "--out", str(target), "--force"]) == 0
    capsys.readouterr()
    # the old spelling still works for one release, with one line saying so
    assert main(["export", str(out), "--format", "safetensors", "--out", str(target), "--force"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: thaw export --format is deprecated, use --to safetensors"]


def thaw_cli(*args: str) -> subprocess.CompletedProcess:
    """``thaw ...`` in a fresh interpreter that fails if torch was imported."""
    code = (
        "import sys\nfrom thaw.cli import main\nrc = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\nsys.exit(rc)"
    )
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)


def test_predict_with_the_onnx_file_runs_without_torch_and_agrees(run, onnx_file, tmp_path):
    data, out = run
    (tmp_path / "broken.png").write_bytes(b"not an image")
    files = [str(f) for f in images_of(data)]
    done = thaw_cli(
        "predict", str(onnx_file), *files, str(tmp_path / "broken.png"), "--jsonl", "--top-k", "2"
    )
    assert done.returncode == 3, done.stderr  # 3: some files could not be read (the broken one)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert rows[-1]["error"].startswith("cannot read image") and rows[-1]["prediction"] is None
    import thaw

    reference = thaw.load(out).predict_paths(files)
    assert len(rows) == len(reference) + 1
    diffs = [
        abs(r["probabilities"][c] - p.probabilities[c])
        for r, p in zip(rows, reference)
        for c in p.probabilities
    ]
    # the same model; images resized by Pillow here, by torchvision in training (at most 1 grey level
    # apart, see below); this deliberately random model is far more sensitive to that than a trained one
    agree = np.mean([r["prediction"] == p.label for r, p in zip(rows, reference)])
    assert max(diffs) < 0.15 and agree >= 0.9, (max(diffs), agree)
    assert [t["probability"] for t in rows[0]["top_k"]] == sorted(rows[0]["probabilities"].values())[::-1][:2]


def test_the_torch_free_resize_matches_torchvision_within_one_grey_level(run, onnx_file):
    from PIL import Image

    from thaw.data.decoded import resized
    from thaw.models import load_model
    from thaw.use.onnx_predictor import OnnxPredictor

    data, out = run
    pre, onnx_predictor = load_model(out).preprocessing, OnnxPredictor(onnx_file)
    for f in images_of(data)[:5]:
        image = Image.open(f).convert("RGB")
        a = resized(image, pre).permute(1, 2, 0).numpy().astype(int)
        b = onnx_predictor.resized(image).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_onnx_file_without_thaw_metadata_is_a_clear_error(run, onnx_file, tmp_path):
    import onnx

    data, _ = run
    plain = onnx.load(str(onnx_file))
    del plain.metadata_props[:]
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    done = thaw_cli("predict", str(tmp_path / "plain.onnx"), str(images_of(data)[0]))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "has no thaw metadata" in lines[0], done.stderr


def test_predict_tta_top_k_and_the_error_column(run, tmp_path, capsys):
    import csv
    import io

    data, out = run
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    files = [str(f) for f in images_of(data)[:4]] + [str(tmp_path / "broken.jpg")]
    assert main(["predict", str(out), *files, "--csv", "--top-k", "2", "--tta"]) == 3  # one unreadable
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [r["path"] for r in rows] == files
    assert rows[-1]["error"].startswith("cannot read image") and rows[-1]["prediction"] == ""
    assert all(r["error"] == "" and r["top1"] == r["prediction"] for r in rows[:-1])
    assert float(rows[0]["p_top1"]) >= float(rows[0]["p_top2"])
    assert "could not read 1 file" in captured.err
    import thaw

    predictor = thaw.load(out)
    plain, tta = predictor.predict_paths(files[:4]), predictor.predict_paths(files[:4], tta=True)
    assert [float(r["confidence"]) for r in rows[:-1]] == pytest.approx([p.confidence for p in tta], abs=1e-4)
    assert any(abs(a.confidence - b.confidence) > 1e-6 for a, b in zip(plain, tta))  # the views differ


def test_tta_views():
    from thaw.core.file_prediction import views

    assert views(60, 80, 48, 55, tta=False) == [(6, 16, False)]
    boxes = views(55, 73, 48, 55, tta=True)
    assert len(boxes) == 6 and boxes[1][2] and all(t + 48 <= 55 and x + 48 <= 73 for t, x, _ in boxes)
    assert views(48, 48, 48, 48, tta=True) == [(0, 0, False), (0, 0, True)]


def test_onnx_predictor_module_imports_no_torch():
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, thaw.use.onnx_predictor, thaw.cli; assert 'torch' not in sys.modules",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
