"""Metrics and reports as data: predictions, accuracy / macro-F1 / AUC / confusion, and the plots."""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from thaw.core.decoding import DECODE_ERRORS
from thaw.core.errors import NothingRead, ThawError
from thaw.core.files import write_atomic
from thaw.core.results import Metrics, dumps
from thaw.core.run_folder import CONFIG
from thaw.data.decoded import open_image
from thaw.data.sources import discover, evaluation_items
from thaw.metrics.bootstrap import bootstrap_ci
from thaw.metrics.classification import classification_metrics
from thaw.use.predictor import Predictor, run_files


@dataclass(frozen=True)
class Evaluation:
    """A trained run scored on labelled images: which images (``split``, ``note``), the metrics, the files
    that could not be decoded, and the JSON file the result was written to."""

    data: str
    split: str
    note: str
    metrics: Metrics
    skipped: list[str]
    path: Path | None = None
    write_error: str | None = None  # why the JSON could not be written (the metrics are still here)

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "split": self.split,
            "note": self.note,
            **self.metrics.to_dict(),
            "skipped": self.skipped,
        }


def evaluate_run(
    run: str | Path,
    data: str | None = None,
    fmt: str = "auto",
    write: bool = True,
    tta: bool = False,
    warn: Callable[[str], None] | None = None,
) -> Evaluation:
    """Score a run on ``data`` (default: the data it was trained on) and write ``evaluations/*.json``.

    Never scores training images: on the run's own data it uses the run's ``split.csv`` and evaluates the
    test split (else val); on other data, the test split if the data has one, else val, else every image,
    leaving out any image the run trained on."""

    predictor = Predictor.load(run, warn)  # warn: no summary.json vouches for the model file
    files = run_files(run)
    run_dir = files.path
    config = files.config() if files.has(CONFIG) else None
    split_file = files.split
    if data is None and config is None:
        raise ThawError(f"{run_dir} has no config.yaml: give the data to evaluate on, thaw evaluate RUN DATA")
    own = config is not None and split_file.is_file() and (data is None or _same_data(data, config.data.path))
    if own:
        sources = discover(files.split_data(config))
        split = "test" if sources.split("test") else "val"
        items, names = sources.split(split), sources.class_names
        note = f"the run's own {split} split (its split.csv)"
        data = config.data.path
    else:
        items, split, names = evaluation_items(data, fmt)
        trained = _training_keys(split_file)
        kept = [it for it in items if str(Path(it.key).resolve()) not in trained]
        note = f"the data's {split} split" if split != "all" else "every image in the data"
        if len(kept) < len(items):
            note += f", less {len(items) - len(kept)} image(s) the run trained on"
        items = kept
        if not items:
            raise ThawError(f"{data}: every image in its {split} split was a training image of {run_dir}")
    target = _targets(items, names, predictor, data, run_dir)
    stored = files.read_predictions().get(split) if own else None
    if stored is not None and stored.tta == tta and stored.keys == [it.key for it in items]:
        probs, labels, skipped = torch.from_numpy(stored.probs), stored.labels.tolist(), []  # computed once
    else:
        probs, labels, skipped = _predict(items, target, predictor, tta, data)
    cut = predictor.thresholds if predictor.multilabel else predictor.threshold
    metrics = classification_metrics(probs, torch.tensor(labels), cut, predictor.class_names)
    metrics = dataclasses.replace(metrics, ci=bootstrap_ci(probs, torch.tensor(labels), cut))
    evaluation = Evaluation(str(data), split, note, metrics, skipped)
    if write:
        try:
            out = _new_file(run_dir / "evaluations", f"{Path(str(data)).stem}-{split}")
            write_atomic(out, dumps(evaluation.to_dict()))
            evaluation = dataclasses.replace(evaluation, path=out)
        except OSError as err:  # a read-only run folder: keep the metrics, say why they are not on disk
            where = err.filename or run_dir / "evaluations"
            evaluation = dataclasses.replace(evaluation, write_error=f"{where}: {err.strerror or err}")
    return evaluation


def _predict(items: list, target, predictor: Predictor, tta: bool, data) -> tuple[torch.Tensor, list, list]:
    """The model's probabilities on ``items``, their labels, and the keys of the images that could not
    be decoded (left out)."""
    images, labels, skipped = [], [], []
    for it in items:
        try:
            images.append(open_image(it, 3, predictor.window, predictor.preprocessing.resize_size))
            labels.append(target(it))
        except DECODE_ERRORS:
            skipped.append(it.key)
    if not images:
        raise NothingRead(f"{data}: none of the {len(items)} images to evaluate could be decoded")
    return predictor.predict_proba(images, tta=tta), labels, skipped


def _targets(items: list, names: list[str], predictor, data, run_dir: Path):
    """How an item's label becomes the model's: its class's index among the model's classes, or (multi-
    label) its 0/1 values in the order of the model's labels, matched by name."""

    multilabel = bool(items) and not isinstance(items[0].label, int)
    if multilabel != predictor.multilabel:
        kinds = ("single-label", "multi-label")
        raise ThawError(
            f"{data} holds {kinds[multilabel]} data and {run_dir} a {kinds[predictor.multilabel]} "
            f"model; evaluate it on data of its own kind"
        )
    if multilabel:
        missing = [n for n in predictor.class_names if n not in names]
        if missing:
            raise ThawError(
                f"{data} has no label column(s) {', '.join(missing)} the model predicts "
                f"(the data's labels: {', '.join(names)})"
            )
        columns = [names.index(n) for n in predictor.class_names]
        return lambda it: [it.label[c] for c in columns]
    index = {c: i for i, c in enumerate(predictor.class_names)}
    unknown = sorted({names[it.label] for it in items} - set(index))
    if unknown:
        raise ThawError(
            f"{data} has class(es) {', '.join(unknown)} the model was not trained on "
            f"(it knows {', '.join(predictor.class_names)})"
        )
    return lambda it: index[names[it.label]]


def _same_data(data: str, trained_on: str) -> bool:
    return data == trained_on or Path(data).resolve() == Path(trained_on).resolve()


def _training_keys(split_file: Path) -> set[str]:
    if not split_file.is_file():
        return set()
    with split_file.open(newline="") as fh:
        return {
            str(Path(r["key"]).resolve()) for r in csv.DictReader(fh) if r["split"] in ("train", "unlabelled")
        }


def _new_file(folder: Path, stem: str) -> Path:
    """``folder/stem-<time>.json``, never one that exists already (two evaluations in one second)."""
    import time

    folder.mkdir(exist_ok=True)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = folder / f"{base}.json", 2
    while path.exists():
        path, n = folder / f"{base}-{n}.json", n + 1
    return path
