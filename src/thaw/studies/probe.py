"""Frozen features as a product: ``thaw embed`` writes them to a file, ``thaw probe`` answers "how good are
these pretrained features for my data, before any fine-tuning?" with linear and k-NN probes under
stratified cross-validation, for one or several models side by side (the quick model-selection step the
MedMNIST+ benchmark recommends before costly end-to-end training)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from thaw.core.config import DataConfig, ModelConfig
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path
from thaw.data import discover, eval_transform
from thaw.data import features as feature_cache
from thaw.models import build_classifier
from thaw.train.head_solver import solve_head
from thaw.train.preflight import refuse_multilabel

KNN_K = (1, 5, 20)


@dataclass
class Embedding:
    """Features of every decodable image, with its label, class name, split and key (path)."""

    features: np.ndarray
    labels: np.ndarray
    splits: list[str]
    keys: list[str]
    class_names: list[str]
    model: str
    seconds: float
    failed: list[str] = field(default_factory=list)


def embed(
    data: DataConfig,
    model: ModelConfig,
    views: int = 1,
    seed: int = 0,
    warn=print,
    workers: int | None = None,
) -> Embedding:
    """Pooled features of every image in ``data`` (all splits) through ``model``'s frozen backbone. Images
    are decoded one at a time (memory does not grow with the dataset) and the features are cached."""
    sources = discover(data)
    classifier = build_classifier(model, len(sources.class_names), sources.class_names, data.image_size)
    pre, channels = classifier.preprocessing, classifier.spec.in_channels
    start = time.perf_counter()
    parts, failed = [], []
    for split in ("train", "val", "test"):
        items = sources.split(split)
        if not items:
            continue
        f = feature_cache.features(
            classifier.backbone,
            items,
            eval_transform(pre),
            {"kind": "eval"},
            pre,
            channels,
            views=1,
            batch_size=max(data.batch_size, 64),
            workers=data.num_workers if workers is None else workers,
            warn=warn,
            way_out=None,  # embed and probe always cache; no flag avoids it
        )
        kept = set(f.keys)
        failed += [it.key for it in items if it.key not in kept]
        parts.append((split, f))
    if failed:
        warn(f"skipped {len(failed)} undecodable image(s): {', '.join(failed[:5])}")
    return Embedding(
        features=np.concatenate([np.asarray(f.x) for _, f in parts]),
        labels=np.concatenate([f.labels for _, f in parts]),
        splits=[s for s, f in parts for _ in f.keys],
        keys=[k for _, f in parts for k in f.keys],
        class_names=sources.class_names,
        model=model.name,
        seconds=time.perf_counter() - start,
        failed=failed,
    )


def check_out(out: Path) -> Path:
    """An embedding's output file, refused before any work: existing, of another type, or Parquet without
    pyarrow."""
    out = Path(out)
    if out.exists():
        raise ThawError(f"{out} already exists; choose another --out (thaw embed never overwrites a file)")
    if out.suffix not in (".npz", ".parquet"):
        raise ThawError(f"--out {out}: give a .npz file (or .parquet, with pyarrow installed)")
    if out.suffix == ".parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise ThawError(
                "--out .parquet needs pyarrow: pip install 'thaw-transfer[parquet]' (or pyarrow); "
                "or write .npz"
            ) from None
    return out


def _class_text(class_names: list[str], label) -> str:
    """The class name of a label; for a multi-label row of 0/1, the names present joined by ``;``."""
    if np.ndim(label):
        return ";".join(n for n, v in zip(class_names, label) if v)
    return class_names[int(label)]


def write_embedding(embedding: Embedding, out: Path) -> Path:
    """``.npz`` (features, labels, class_names, splits, keys, model), or ``.parquet`` with pyarrow.
    Never overwrites a file."""

    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if out.suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(
                {
                    "key": embedding.keys,
                    "split": embedding.splits,
                    "label": embedding.labels if embedding.labels.ndim == 1 else list(embedding.labels),
                    "class": [_class_text(embedding.class_names, y) for y in embedding.labels],
                    "features": list(embedding.features),
                }
            )
            pq.write_table(table, tmp)
        else:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    features=embedding.features,
                    labels=embedding.labels,
                    class_names=np.asarray(embedding.class_names),
                    splits=np.asarray(embedding.splits),
                    keys=np.asarray(embedding.keys),
                    model=np.asarray(embedding.model),
                )
    return out


@dataclass
class ProbeResult:
    model: str
    dims: int
    images: int
    folds: int
    linear: list[float]  # accuracy per fold
    knn: list[float]
    linear_f1: list[float]
    knn_f1: list[float]
    seconds: float
    feature_seconds: float


def parse_models(text: str, model: ModelConfig) -> list[ModelConfig]:
    """``--model a,b@WEIGHTS,c``: one model config per name, each with the weights after its ``@`` (else
    ``model``'s)."""
    models = []
    for entry in (n.strip() for n in text.split(",")):
        name, _, weights = entry.partition("@")
        if name:
            models.append(dataclasses.replace(model, name=name, weights=weights or model.weights))
    return models


def probe(
    data: DataConfig, models: list[ModelConfig], folds: int = 5, seed: int = 0, warn=print
) -> list[ProbeResult]:
    """Linear (logistic regression, L2 chosen on an inner split) and k-NN (cosine, k chosen on an inner
    split) probes of each model's frozen features, by stratified ``folds``-fold cross-validation over the
    labelled train and val images (the test split, if any, is left alone)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    refuse_multilabel(discover(data), "thaw probe")  # its probes are multiclass logistic regression and k-NN
    results = []
    for model in models:
        start = time.perf_counter()
        e = embed(data, model, warn=warn)
        pool = np.array([s != "test" for s in e.splits])
        x, y = e.features[pool], e.labels[pool]
        smallest = np.bincount(y).min()
        k = min(folds, smallest)
        if k < 2:
            raise ThawError(
                f"{data.path}: a class has {smallest} labelled image(s); a probe needs at least 2"
            )
        linear, knn, linear_f1, knn_f1 = [], [], [], []
        for train_idx, test_idx in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
            inner = _inner_split(train_test_split, train_idx, y, seed)
            acc, f1 = _linear(x, y, train_idx, test_idx, inner, len(e.class_names))
            linear.append(acc)
            linear_f1.append(f1)
            acc, f1 = _knn(x, y, train_idx, test_idx, inner)
            knn.append(acc)
            knn_f1.append(f1)
        results.append(
            ProbeResult(
                model.name,
                x.shape[1],
                len(y),
                k,
                linear,
                knn,
                linear_f1,
                knn_f1,
                seconds=time.perf_counter() - start,
                feature_seconds=e.seconds,
            )
        )
    return results


def _inner_split(splitter, train_idx: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified 80/20 split of a fold's training part, to choose the L2 strength and k on."""
    try:
        return splitter(train_idx, test_size=0.2, stratify=y[train_idx], random_state=seed)
    except ValueError:  # a class too small to stratify: split without it
        return splitter(train_idx, test_size=0.2, random_state=seed)


def _scores(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import f1_score

    return float((y_true == y_pred).mean()), float(f1_score(y_true, y_pred, average="macro"))


def _linear(x, y, train_idx, test_idx, inner, num_classes) -> tuple[float, float]:
    t = lambda idx: torch.from_numpy(np.ascontiguousarray(x[idx]))  # noqa: E731
    fit, held = inner
    chosen = solve_head(t(fit), torch.from_numpy(y[fit]), t(held), torch.from_numpy(y[held]), num_classes)
    final = solve_head(
        t(train_idx),
        torch.from_numpy(y[train_idx]),
        t(held),
        torch.from_numpy(y[held]),
        num_classes,
        grid=(chosen.l2,),
    )
    pred = (t(test_idx) @ final.weight.T + final.bias).argmax(1).numpy()
    return _scores(y[test_idx], pred)


def _knn(x, y, train_idx, test_idx, inner) -> tuple[float, float]:
    from sklearn.neighbors import KNeighborsClassifier

    fit, held = inner
    best = max(
        (k for k in KNN_K if k <= len(fit)),
        key=lambda k: KNeighborsClassifier(k, metric="cosine").fit(x[fit], y[fit]).score(x[held], y[held]),
    )
    pred = KNeighborsClassifier(best, metric="cosine").fit(x[train_idx], y[train_idx]).predict(x[test_idx])
    return _scores(y[test_idx], pred)
