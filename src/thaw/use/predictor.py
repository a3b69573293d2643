"""Using a trained model: ``thaw.load(run_folder).predict(["a.jpg", "folder/"])``, a pandas DataFrame."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import yaml
from PIL import Image

from thaw.core.config import dicom_window
from thaw.core.decoding import DECODE_ERRORS
from thaw.core.errors import ThawError
from thaw.core.file_prediction import Prediction, expand_paths, failure, result, views
from thaw.core.run_folder import CONFIG, RunFiles
from thaw.data import shards
from thaw.data.decoded import open_image, resized
from thaw.data.images import eval_transform
from thaw.data.sources import Item
from thaw.models import Classifier, load_model
from thaw.models.state_dict import sha256
from thaw.use.model_card import check_card

__all__ = ["Prediction", "Predictor", "expand_paths"]


class Predictor:
    """A trained classifier with its own preprocessing and class names. A multi-label model
    (``multilabel``) gives per-label probabilities and the labels that reach their ``thresholds`` (the
    run's, chosen on validation; 0.5 each without a run folder)."""

    def __init__(
        self,
        model: Classifier,
        threshold: float | None = None,
        window: tuple[float, float] | None = None,
        thresholds: list[float] | None = None,
        rule: str = "",
    ) -> None:
        self.model = model.eval()
        self.window = window  # the run's --dicom-window, for DICOM files
        self.multilabel = model.multilabel
        # binary: class 1 where its probability reaches the threshold the run chose on validation
        self.threshold = threshold if len(model.class_names) == 2 and not self.multilabel else None
        self.rule = rule  # how the run chose the threshold (summary.json's operating rule)
        self.thresholds = None
        if self.multilabel:
            self.thresholds = list(thresholds) if thresholds else [0.5] * len(model.class_names)
        self.class_names = model.class_names
        self.preprocessing = model.preprocessing
        self._transform = eval_transform(model.preprocessing)

    @classmethod
    def load(cls, path: str | Path, warn: Callable[[str], None] | None = None) -> Predictor:
        """The model of a run folder or a model file, checked (see :func:`verify_model_file`); ``warn``
        (default ``warnings.warn``) hears one line when no readable ``summary.json`` vouches for it."""
        note = verify_model_file(path)
        model = load_model(path)
        file = Path(path) / "model.safetensors" if Path(path).is_dir() else Path(path)
        check_card(file, model.class_names)  # MODEL_CARD.md beside it must describe this very file
        if note:
            older = "its tensors only (a file written before it covered the metadata)"
            covered = "its tensors and metadata" if model.metadata_checked else older
            (warn or _warn)(f"{note}; relying on the model file's own digest, which covers {covered}")
        operating = model.operating  # under the file's digest; older files: the run's summary.json
        if operating is not None:
            threshold, rule = operating.get("threshold"), operating.get("rule") or ""
            thresholds = operating.get("thresholds") or {}
            per_label = [float(thresholds[n]) for n in model.class_names] if thresholds else None
        else:
            threshold, rule = run_threshold(path), run_rule(path)
            per_label = run_thresholds(path, model.class_names)
        return cls(model, threshold, run_window(path), per_label, rule)

    def decision(self) -> str:
        """How a label is chosen, in words: the binary threshold and the rule that chose it, else the
        argmax (and why, when the run could not choose a threshold)."""
        if self.multilabel:
            return "every label whose probability reaches its threshold"
        if self.threshold is None:
            return self.rule if self.rule.startswith("argmax:") else "argmax: the most probable class"
        low, high = self.class_names
        return (
            f"{high} where p_{high} >= {self.threshold:.3f}, else {low} (threshold by "
            f"{self.rule or 'the run'}; not the argmax)"
        )

    def tensor(self, image: Image.Image) -> torch.Tensor:
        mode = "L" if self.model.spec.in_channels == 1 else "RGB"
        return self._transform(resized(image.convert(mode), self.preprocessing))

    @torch.no_grad()
    def predict_proba(
        self, images: list[Image.Image], batch_size: int = 64, tta: bool = False
    ) -> torch.Tensor:
        """Class probabilities [N, C] (multi-label: per-label sigmoids); with ``tta``, averaged over the
        flip and small-crop views."""
        if not tta:
            return self._run([self.tensor(im) for im in images], batch_size)
        out = []
        for im in images:
            mode = "L" if self.model.spec.in_channels == 1 else "RGB"
            x = resized(im.convert(mode), self.preprocessing)
            pre = self.preprocessing
            crops = []
            for top, left, flip in views(x.shape[1], x.shape[2], pre.size, pre.resize_size, tta=True):
                crop = x[:, top : top + pre.size, left : left + pre.size]
                crops.append(self._normalise(crop.flip(-1) if flip else crop))
            out.append(self._run(crops, batch_size).mean(dim=0))
        return torch.stack(out) if out else torch.empty(0, len(self.class_names))

    def _normalise(self, crop: torch.Tensor) -> torch.Tensor:
        pre = self.preprocessing
        mean, std = torch.tensor(pre.mean).view(-1, 1, 1), torch.tensor(pre.std).view(-1, 1, 1)
        return (crop.float() / 255 - mean) / std

    def _run(self, tensors: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        out = [
            self.model.probabilities(self.model(torch.stack(tensors[i : i + batch_size])))
            for i in range(0, len(tensors), batch_size)
        ]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def predict_paths(self, paths: list[str | Path], tta: bool = False) -> list[Prediction]:
        """One prediction per image file (folders are searched recursively), in order; a file that cannot
        be read gets a prediction with ``error`` set instead of a label."""
        return list(self.iter_paths(paths, tta))

    def iter_paths(
        self, paths: list[str | Path], tta: bool = False, batch_size: int = 64
    ) -> Iterator[Prediction]:
        """:meth:`predict_paths` one at a time: files are decoded and classified ``batch_size`` at a time,
        so memory stays flat over any number of files."""
        files = images_of(paths)
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            images, slots, out = [], [], []
            for f in chunk:
                try:
                    target = self.preprocessing.resize_size
                    images.append(open_image(f, 3, self.window, target))
                    slots.append(len(out))
                    out.append(None)
                except DECODE_ERRORS as err:
                    out.append(failure(f.key, err))
            probs = self.predict_proba(images, batch_size=batch_size, tta=tta)
            for slot, p in zip(slots, probs):
                out[slot] = result(
                    chunk[slot].key, self.class_names, p.tolist(), self.threshold, self.thresholds
                )
            yield from out

    def predict_files(self, paths: list[str | Path], tta: bool = False) -> tuple[list[Prediction], list[str]]:
        """Predictions for the image files (folders are searched recursively), and the files that failed."""
        done = self.predict_paths(paths, tta)
        return [p for p in done if p.error is None], [p.path for p in done if p.error is not None]

    def predict(self, images, tta: bool = False, batch_size: int = 64):
        """A pandas DataFrame, one row per image: ``path``, ``prediction``, ``confidence``, ``p_<class>``
        for every class and ``error`` (the columns of ``thaw predict --csv``). ``images``: files and
        folders (searched recursively), or PIL images (their ``path`` is None), or one of either. A file
        that cannot be read gets a row with ``error`` set. ``tta`` as in every other method."""
        import pandas as pd  # a dependency; loaded when a table is asked for

        items = images if isinstance(images, list | tuple) else [images]
        if items and all(isinstance(im, Image.Image) for im in items):
            probs = self.predict_proba(list(items), batch_size, tta)
            preds = [
                result(None, self.class_names, p.tolist(), self.threshold, self.thresholds) for p in probs
            ]
        elif any(isinstance(im, Image.Image) for im in items):
            raise ThawError("predict takes image files and folders, or PIL images: not both in one call")
        else:
            preds = list(self.iter_paths(list(items), tta, batch_size))
        columns = ["path", "prediction", "confidence", *(f"p_{c}" for c in self.class_names), "error"]
        rows = [
            [p.path, p.label, None if p.error else p.confidence]
            + [p.probabilities.get(c) for c in self.class_names]
            + [p.error]
            for p in preds
        ]
        return pd.DataFrame(rows, columns=columns)


def _warn(text: str) -> None:
    warnings.warn(text, stacklevel=3)


def images_of(paths: list[str | Path]) -> list[Item]:
    """The images to classify: files (folders searched recursively), or every sample of shards (one
    path that names shards: a folder of them, a pattern or a URL; see ``thaw.data.shards``)."""
    if len(paths) == 1 and shards.claims(str(paths[0])):
        return shards.find(str(paths[0])).items
    return [Item(str(f), -1) for f in expand_paths(paths)]


def run_files(path: str | Path) -> RunFiles:
    """The run folder of ``path``: the folder itself, or the folder a model file sits in."""
    path = Path(path)
    return RunFiles(path if path.is_dir() else path.parent)


def run_threshold(path: str | Path) -> float | None:
    """The decision threshold a run chose on validation (``summary.json``'s ``operating``), if any."""
    summary = run_files(path).summary
    try:
        value = (json.loads(summary.read_text()).get("operating") or {}).get("threshold")
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def run_rule(path: str | Path) -> str:
    """How the run chose its decision threshold (``summary.json``'s ``operating.rule``), if it says."""
    summary = run_files(path).summary
    try:
        rule = (json.loads(summary.read_text()).get("operating") or {}).get("rule")
    except (OSError, ValueError, AttributeError):
        return ""
    return rule if isinstance(rule, str) else ""


def run_thresholds(path: str | Path, class_names: list[str]) -> list[float] | None:
    """A multi-label run's per-label thresholds (``summary.json``'s ``operating``), in the model's label
    order; None without them."""
    summary = run_files(path).summary
    try:
        found = (json.loads(summary.read_text()).get("operating") or {}).get("thresholds") or {}
        return [float(found[name]) for name in class_names]
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return None


def run_window(path: str | Path) -> tuple[float, float] | None:
    """The run's ``--dicom-window`` (``config.yaml``), if it had one."""
    config = run_files(path) / CONFIG
    try:
        value = ((yaml.safe_load(config.read_text()) or {}).get("data") or {}).get("dicom_window")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return dicom_window(value) if value else None


def verify_model_file(path: str | Path) -> str | None:
    """A run's ``model.safetensors`` must be the file the run wrote: its sha256 is in ``summary.json``.
    Returns why that check could not be made (no ``summary.json``, or one that is not readable JSON with
    the sha256), else None; the model file's own digest is then all there is (``load_model`` checks it)."""
    model = RunFiles(path).model if Path(path).is_dir() else Path(path)
    summary = run_files(model).summary
    if not model.is_file():
        return None  # load_model says so
    if not summary.is_file():
        return f"no summary.json beside {model}"
    try:
        expected = json.loads(summary.read_text()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        return f"{summary} is not readable JSON"
    if not isinstance(expected, str):
        return f"{summary} holds no model_sha256"
    if sha256(model) != expected:
        raise ThawError(
            f"{model} has changed since the run wrote it (its sha256 is not the one in {summary}); "
            f"restore the original file or train again"
        )
    return None
