"""What both predictors share, torch-free: the :class:`Prediction` record, finding image files, and the
test-time-augmentation views. ``thaw predict model.onnx`` runs on this, numpy, Pillow and onnxruntime
alone, without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from thaw.core.errors import ThawError

# the image files thaw reads, here in the torch-free core: thaw.data.sources lists folders with the same
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".dcm",
    ".dicom",
)


@dataclass
class Prediction:
    """One file's result: the top class, its probability and every class's; or, for a file that could
    not be read, ``error`` (and no label). Multi-label: ``labels`` is the predicted label set (each label
    whose probability reaches its threshold), ``label`` those names joined by ``;`` (empty: none),
    ``confidence`` the highest label probability, and the probabilities need not sum to 1."""

    path: str
    label: str | None
    confidence: float
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    labels: list[str] | None = None

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, k: int | None = None) -> dict:
        confidence = None if self.error else self.confidence  # JSON has no NaN
        out = {"path": self.path, "prediction": self.label, "confidence": confidence}
        if k:
            out["top_k"] = [{"label": c, "probability": p} for c, p in self.top(k)]
        if self.labels is not None:
            out["labels"] = self.labels
        return {**out, "probabilities": self.probabilities, "error": self.error}


def result(
    path: str,
    class_names: list[str],
    probs,
    threshold: float | None = None,
    thresholds: list[float] | None = None,
) -> Prediction:
    """The top class; for two classes with a ``threshold``, class 1 where its probability reaches it.
    With ``thresholds`` (a multi-label model: one per label), every label whose probability reaches its
    own."""
    if thresholds is not None:
        present = [c for c, p, t in zip(class_names, probs, thresholds) if p >= t]
        return Prediction(
            path,
            ";".join(present),
            float(max(probs)),
            {c: float(p) for c, p in zip(class_names, probs)},
            labels=present,
        )
    top = max(range(len(class_names)), key=lambda i: probs[i])
    if threshold is not None and len(class_names) == 2:
        top = int(probs[1] >= threshold)
    return Prediction(
        path, class_names[top], float(probs[top]), {c: float(p) for c, p in zip(class_names, probs)}
    )


def failure(path: str, err: Exception) -> Prediction:
    reason = str(err).replace(str(path), "").strip(" :'\"") or type(err).__name__
    return Prediction(path, None, float("nan"), {}, f"cannot read image: {reason}")


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


def views(height: int, width: int, size: int, resize_size: int, tta: bool) -> list[tuple[int, int, bool]]:
    """(top, left, flip) of each ``size`` crop of an image resized to ``height x width`` (shorter side
    ``resize_size``). Without TTA, the center crop (torchvision's rounding). With TTA, also its mirror
    image and, when ``resize_size > size``, the four corner crops of the central ``resize_size`` square:
    small shifts, as in the eval resize-then-crop, averaged."""
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    out = [(top, left, False)]
    if not tta:
        return out
    out.append((top, left, True))
    if resize_size > size:
        t0, l0 = (height - resize_size) // 2, (width - resize_size) // 2
        shift = resize_size - size
        out += [(t0 + dt, l0 + dl, False) for dt in (0, shift) for dl in (0, shift)]
    return out
