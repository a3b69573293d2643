"""``thaw export RUN --to onnx|torchscript|safetensors``: the run's model for serving, with its
preprocessing and class names alongside it (``<file>.json``; inside the ONNX file as metadata too).

ONNX and TorchScript files take what a service has after decoding an image: ``image``, float32
``[batch, channels, size, size]`` in [0, 1], RGB (L for one-channel models), the shorter side resized to
``resize_size`` and center-cropped to ``size``; normalisation (mean, std) and softmax are inside the
graph, the output is ``probabilities`` ``[batch, classes]`` (a multi-label model: a sigmoid per label,
not a softmax; its per-label thresholds in the metadata), and the batch size is dynamic. The
safetensors file is the model's state dict with thaw's metadata (``thaw.load`` rebuilds it): it outputs
logits and expects normalised input, as the sidecar says.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_atomic
from thaw.core.results import RunSummary
from thaw.core.run_folder import RunFiles
from thaw.models import Classifier, load_model
from thaw.use.model_card import write_model_card
from thaw.use.predictor import Predictor, run_files
from thaw.use.reporting.html import Predictions
from thaw.version import __version__

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "safetensors": ".safetensors"}
METADATA_KEY = "thaw"  # the ONNX metadata_props key holding the same JSON as the sidecar file


class ServingModel(nn.Module):
    """``softmax(model((x - mean) / std))`` for ``x`` in [0, 1] (multi-label: a sigmoid per label)."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model.eval()
        pre = model.preprocessing
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(self.model((image - self.mean) / self.std))


@dataclass(frozen=True)
class Exported:
    path: Path
    metadata_path: Path
    metadata: dict


def metadata(model: Classifier, fmt: str) -> dict:
    pre = dataclasses.asdict(model.preprocessing)
    channels = model.spec.in_channels
    inside = fmt != "safetensors"
    return {
        "thaw_export": 1,
        "thaw_version": __version__,
        "format": fmt,
        "class_names": model.class_names,
        "preprocessing": pre,
        "input": {
            "name": "image",
            "shape": ["batch", channels, pre["size"], pre["size"]],
            "dtype": "float32",
            "colour": "L" if channels == 1 else "RGB",
            "steps": [
                f"resize the shorter side to {pre['resize_size']} px ({pre['interpolation']}, antialiased)",
                f"center-crop to {pre['size']}x{pre['size']}",
                "scale to [0, 1]",
                *([] if inside else [f"normalise: (x - {pre['mean']}) / {pre['std']}"]),
            ],
            "normalised_inside": inside,
        },
        "output": {
            "name": "probabilities" if inside else "logits",
            "shape": ["batch", len(model.class_names)],
            **({"activation": "sigmoid per label"} if model.multilabel and inside else {}),
        },
        "task": "multilabel" if model.multilabel else "single-label",
        "model": dataclasses.asdict(model.spec),
    }


def export_run(
    run: str | Path, fmt: str = "onnx", out: str | Path | None = None, force: bool = False
) -> Exported:
    """Export the model of ``run`` (a run folder or its model.safetensors) to ``out`` (default
    ``RUN/export/model.<suffix>``); an existing file is refused unless ``force``."""
    if fmt not in FORMATS:
        raise ThawError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    source = Path(run)
    run_dir = source if source.is_dir() else source.parent
    path = Path(out) if out else run_dir / "export" / f"model{SUFFIX[fmt]}"
    sidecar = path.with_name(path.name + ".json")
    for existing in (path, sidecar):
        if existing.exists() and not force:
            raise ThawError(f"{existing} already exists; choose another --out or pass --force to replace it")
    predictor = Predictor.load(source)  # the file checked, its threshold(s): the file's, else the run's
    model = predictor.model
    meta = metadata(model, fmt)
    if predictor.threshold is not None:  # binary: class 1 where its probability reaches it (chosen on val)
        meta["threshold"] = predictor.threshold
    if model.multilabel:  # every label whose probability reaches its own (chosen on validation; else 0.5)
        meta["thresholds"] = predictor.thresholds
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        if fmt == "onnx":
            _onnx(model, meta, tmp)
        elif fmt == "torchscript":
            _torchscript(model, meta, tmp)
        else:
            shutil.copyfile(source if source.is_file() else RunFiles(source).model, tmp)
    write_atomic(sidecar, json.dumps(meta, indent=2) + "\n")
    if (run_dir / "summary.json").is_file() and (run_dir / "config.yaml").is_file():
        write_model_card(run_dir, run_dir.name, [path])  # MODEL_CARD.md beside the export
    return Exported(path, sidecar, meta)


def _example(model: Classifier, batch: int = 2) -> torch.Tensor:
    size = model.preprocessing.size
    return torch.rand(batch, model.spec.in_channels, size, size)


def _onnx(model: Classifier, meta: dict, path: Path) -> None:
    import warnings

    try:
        import onnx  # noqa: F401  (torch's ONNX exporter needs onnx and onnxscript, the check onnxruntime)
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ThawError(f"ONNX export needs {err.name}: pip install 'thaw-transfer[export]'") from None
    serving = ServingModel(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            serving,
            (_example(model),),
            input_names=["image"],
            output_names=["probabilities"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            dynamo=True,
            verbose=False,
        )
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    program.save(str(path), external_data=False)


def _torchscript(model: Classifier, meta: dict, path: Path) -> None:
    import warnings

    serving = ServingModel(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(serving, _example(model))  # deprecated in torch 2.10+, still the
        torch.jit.save(traced, str(path), _extra_files={"thaw.json": json.dumps(meta)})  # only .pt format


@dataclass(frozen=True)
class Parity:
    images: int
    max_abs_diff: float
    top1_agreement: float  # multi-label: the share of equal (image, label) decisions at 0.5


def parity(exported: Exported, run: str | Path, images: np.ndarray) -> Parity:
    """The exported file against the PyTorch model on the same inputs (``[N, C, S, S]`` in [0, 1]):
    the largest absolute difference of any probability, and the share of equal top-1 classes (multi-
    label: of equal decisions per label at 0.5)."""
    model = load_model(run)
    serving = ServingModel(model).eval()
    with torch.no_grad():
        reference = serving(torch.from_numpy(images)).numpy()
    fmt = exported.metadata["format"]
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": images})[0]
    elif fmt == "torchscript":
        with torch.no_grad():
            got = torch.jit.load(str(exported.path))(torch.from_numpy(images)).numpy()
    else:
        with torch.no_grad():
            got = ServingModel(load_model(exported.path))(torch.from_numpy(images)).numpy()
    if model.multilabel:
        agreement = float(((got >= 0.5) == (reference >= 0.5)).mean())
    else:
        agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    return Parity(len(images), float(np.abs(got - reference).max()), agreement)


def check_on_run(exported: Exported, run: str | Path) -> str:
    """:func:`parity` on the run's own test (else val) images, as one line; or why it was not checked."""

    files = run_files(run)
    try:
        found = Predictions.of(files, files.config(), RunSummary.read(files.path))
    except ThawError as err:
        return f"parity not checked: {err}"
    if not found.ok:
        return f"parity not checked: {found.reason}"
    channels = exported.metadata["input"]["shape"][1]
    images = np.stack([c.transpose(2, 0, 1)[:channels] for c in found.crops]).astype(np.float32) / 255.0
    result = parity(exported, files.path, images)
    return (
        f"parity with PyTorch on {result.images} {found.split} images: max |probability difference| "
        f"{result.max_abs_diff:.2e}, "
        + ("label-wise" if exported.metadata.get("task") == "multilabel" else "top-1")
        + f" agreement {100 * result.top1_agreement:.1f}%"
    )
