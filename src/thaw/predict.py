"""Using a trained model: ``thaw.load(run_folder).predict_files([...])``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from thaw.data.images import DECODE_ERRORS, eval_transform, open_image, resized
from thaw.data.sources import IMAGE_EXTENSIONS, Item
from thaw.errors import ThawError
from thaw.models import Classifier, load_model


@dataclass
class Prediction:
    path: str
    label: str
    confidence: float
    probabilities: dict[str, float]


class Predictor:
    """A trained classifier with its own preprocessing and class names."""

    def __init__(self, model: Classifier) -> None:
        self.model = model.eval()
        self.class_names = model.class_names
        self.preprocessing = model.preprocessing
        self._transform = eval_transform(model.preprocessing)

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        verify_model_file(path)
        return cls(load_model(path))

    def tensor(self, image: Image.Image) -> torch.Tensor:
        mode = "L" if self.model.spec.in_channels == 1 else "RGB"
        return self._transform(resized(image.convert(mode), self.preprocessing))

    @torch.no_grad()
    def predict_proba(self, images: list[Image.Image], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.tensor(im) for im in images[i : i + batch_size]])
            out.append(self.model(batch).softmax(dim=1))
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def predict_files(self, paths: list[str | Path]) -> tuple[list[Prediction], list[str]]:
        """Predictions for the image files (folders are searched recursively), and the files that failed."""
        preds, failed = [], []
        for result in self.iter_files(paths):
            (preds if isinstance(result, Prediction) else failed).append(result)
        return preds, failed

    def iter_files(self, paths: list[str | Path], batch_size: int = 64) -> Iterator[Prediction | str]:
        """A :class:`Prediction` per image file, or its path when it cannot be decoded, in order; decoded
        and classified ``batch_size`` files at a time, so memory stays flat over any number of files."""
        files = expand_paths(paths)
        for start in range(0, len(files), batch_size):
            batch, order = [], []
            for f in files[start : start + batch_size]:
                try:
                    batch.append(self.tensor(open_image(Item(str(f), -1), 3)))
                    order.append(str(f))
                except DECODE_ERRORS:
                    order.append(None)
                    batch.append(None)
            tensors = [t for t in batch if t is not None]
            with torch.no_grad():
                probs = iter(self.model(torch.stack(tensors)).softmax(dim=1) if tensors else [])
            for f, path in zip(files[start : start + batch_size], order):
                if path is None:
                    yield str(f)
                    continue
                p = next(probs)
                top = int(p.argmax())
                yield Prediction(
                    path,
                    self.class_names[top],
                    float(p[top]),
                    {c: float(v) for c, v in zip(self.class_names, p)},
                )


def verify_model_file(path: str | Path) -> None:
    """A run's ``model.safetensors`` must be the file the run wrote: its sha256 is in ``summary.json``."""
    import json

    from thaw.models.state_dict import sha256

    path = Path(path)
    model = path / "model.safetensors" if path.is_dir() else path
    summary = model.parent / "summary.json"
    if not model.is_file() or not summary.is_file():
        return
    try:
        expected = json.loads(summary.read_text()).get("model_sha256")
    except (OSError, ValueError, AttributeError):
        return  # an unreadable summary says nothing about the model; load_model checks the file itself
    if expected and sha256(model) != expected:
        raise ThawError(
            f"{model} has changed since the run wrote it (its sha256 is not the one in {summary}); "
            f"restore the original file or train again"
        )


def expand_paths(paths: list[str | Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise ThawError(f"{p}: no such image file or folder")
    if not files:
        raise ThawError(
            f"no images found in {', '.join(map(str, paths))} (extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files
