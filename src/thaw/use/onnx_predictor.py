"""Predicting with a file from ``thaw export --to onnx``: onnxruntime, numpy and Pillow, no torch.

The preprocessing comes from the file's own metadata (written by ``thaw export``): resize the shorter
side with Pillow (antialiased, as torchvision's resize of the training images), center-crop, scale to
[0, 1]; normalisation and softmax (a multi-label model: a sigmoid per label) are inside the graph.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from thaw.core import preprocessing
from thaw.core.decoding import DECODE_ERRORS, read_image
from thaw.core.errors import ThawError
from thaw.core.file_prediction import Prediction, expand_paths, failure, result, views
from thaw.use.model_card import check_card

RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class OnnxPredictor:
    """``OnnxPredictor(path).predict_paths([...])``: the results of :class:`thaw.use.predictor.Predictor`."""

    def __init__(self, path: str | Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ThawError(
                "predicting with an ONNX file needs onnxruntime: pip install 'thaw-transfer[export]'"
            ) from None
        path = Path(path)
        if not path.is_file():
            raise ThawError(f"no ONNX file at {path}")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for files it cannot load
            raise ThawError(f"{path} is not a readable ONNX model ({str(err).splitlines()[0]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get("thaw")
        if raw is None:
            raise ThawError(
                f"{path} has no thaw metadata (class names, preprocessing); export the run with "
                f"`thaw export RUN --to onnx`, or predict with the run folder itself"
            )
        self.metadata = _checked(raw, path)
        self.class_names: list[str] = self.metadata["class_names"]
        self.preprocessing: dict = self.metadata["preprocessing"]
        self.channels = self.metadata["input"]["shape"][1]
        check_card(path, self.class_names)  # MODEL_CARD.md beside it must describe this very file

    def decision(self) -> str:
        """How a label is chosen, in words (the binary threshold from the export's metadata)."""
        threshold = self.metadata.get("threshold")
        if threshold is None or len(self.class_names) != 2 or self.metadata.get("task") == "multilabel":
            return "argmax: the most probable class"
        low, high = self.class_names
        return f"{high} where p_{high} >= {threshold:.3f}, else {low} (the run's threshold; not the argmax)"

    def resized(self, image: Image.Image) -> np.ndarray:
        """uint8 [H, W, C] with the shorter side at ``resize_size`` (torchvision's output size rule)."""
        pre = self.preprocessing
        image = image.convert("L" if self.channels == 1 else "RGB")
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = pre["resize_size"], int(pre["resize_size"] * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        array = np.asarray(image.resize(size, RESAMPLE.get(pre["interpolation"], Image.Resampling.BILINEAR)))
        return array[..., None] if array.ndim == 2 else array

    def arrays(self, image: Image.Image, tta: bool = False) -> np.ndarray:
        """The model's inputs for one image: ``[views, C, size, size]`` float32 in [0, 1]."""
        pre, x = self.preprocessing, self.resized(image)
        size = pre["size"]
        out = []
        for top, left, flip in views(x.shape[0], x.shape[1], size, pre["resize_size"], tta):
            crop = x[top : top + size, left : left + size]
            out.append((crop[:, ::-1] if flip else crop).transpose(2, 0, 1))
        return np.stack(out).astype(np.float32) / 255.0

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def predict_paths(
        self, paths: list[str | Path], tta: bool = False, batch_size: int = 64
    ) -> list[Prediction]:
        out: list[Prediction] = []
        for f in expand_paths(paths):
            try:  # the reader of training and the PyTorch predictor: 16-bit, DICOM, huge images alike
                image = read_image(str(f), self.channels, None, self.preprocessing["resize_size"])[0]
            except DECODE_ERRORS as err:
                out.append(failure(str(f), err))
                continue
            probs = self.predict_proba(self.arrays(image, tta)).mean(axis=0)
            out.append(
                result(
                    str(f),
                    self.class_names,
                    probs.tolist(),
                    self.metadata.get("threshold"),
                    self.metadata.get("thresholds") if self.metadata.get("task") == "multilabel" else None,
                )
            )
        return out


def _checked(raw: str, path: Path) -> dict:
    """The export's metadata, each value checked for type and range before it is used (the ONNX file
    carries no digest of it: an edited class list or preprocessing is caught here, or not at all)."""
    fix = "export the run again (thaw export RUN --format onnx)"
    try:
        meta = json.loads(raw)
        names, pre, channels = meta["class_names"], meta["preprocessing"], meta["input"]["shape"][1]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise ThawError(f"{path}: its thaw metadata is damaged ({type(err).__name__}); {fix}") from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        raise ThawError(f"{path}: its class names are not a list of names; {fix}")
    if len(set(names)) != len(names):
        raise ThawError(f"{path}: its class names repeat; {fix}")
    if not isinstance(channels, int) or channels not in (1, 3) or not preprocessing.valid(pre, channels):
        raise ThawError(
            f"{path}: its preprocessing does not fit a {channels!r}-channel input (a mean and a positive std "
            f"per channel, as numbers; 0 < size <= resize_size <= {preprocessing.max_side(3)}); {fix}"
        )
    threshold = meta.get("threshold")
    if threshold is not None and not (preprocessing.number(threshold) and 0 <= threshold <= 1):
        raise ThawError(f"{path}: its threshold {str(threshold)[:40]!r} is not a probability; {fix}")
    return meta
