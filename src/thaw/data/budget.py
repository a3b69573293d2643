"""Label budgets: train on a stratified, seeded subset of the training labels.

``--labels-per-class K`` keeps K labelled training images of every class; ``--label-fraction F`` keeps
``round(F * n)`` of each class's n. The rest of the training split becomes the ``unlabelled`` split:
recorded in the run's ``split.csv`` (so ``thaw resume`` and ``thaw evaluate`` see the same subset) and
available to AdaBN and pseudo-labelling. Validation and test are never touched.

A budget larger than a class is an error (not a silent cap: a cap would change the class balance the
user asked for), and so is a class left with no labelled image.

Multi-label data: an image has several labels, so there is no "per class" to cut by; ``--label-fraction``
keeps a seeded ``round(F * n)`` of the n training images, and a label that had positive training images
and has none left is an error; ``--labels-per-class`` is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from thaw.core.config import DataConfig
from thaw.core.errors import ThawError
from thaw.data.sources import IMAGE_EXTENSIONS, Item, Sources

UNLABELLED = "unlabelled"


def has_budget(data: DataConfig) -> bool:
    return data.labels_per_class is not None or data.label_fraction is not None


def apply_budget(sources: Sources, data: DataConfig, seed: int) -> Sources:
    """``sources`` with the training images outside the budget moved to the ``unlabelled`` split (a copy;
    ``sources`` is unchanged). Sources that already have an ``unlabelled`` split (a run's ``split.csv``)
    come back as they are: the budget was drawn when the run started."""
    if not has_budget(data) or sources.split(UNLABELLED):
        return sources
    seed = data.label_seed if data.label_seed is not None else seed
    rng = np.random.default_rng(seed)
    items = [dataclasses.replace(it) for it in sources.items]
    cut = _fraction_of_images if sources.multilabel else _per_class
    cut(sources, items, data, rng)
    origin = f"{sources.split_origin}+budget:{budget_text(data)}@seed{seed}"
    return dataclasses.replace(sources, items=items, split_origin=origin)


def _per_class(sources: Sources, items: list[Item], data: DataConfig, rng) -> None:
    """Single-label: ``--labels-per-class K`` or a seeded ``round(F * n)`` of each class's training images
    keep their labels."""
    by_class: dict[int, list[int]] = {}
    for i, it in enumerate(items):
        if it.split == "train":
            by_class.setdefault(it.label, []).append(i)
    for label, idx in sorted(by_class.items()):
        n = len(idx)
        name = sources.class_names[label]
        if data.labels_per_class is not None:
            keep = data.labels_per_class
            if keep > n:
                raise ThawError(
                    f"--labels-per-class {keep} is larger than class {name!r}, which has {n} training "
                    f"image(s); use at most {n}, or --label-fraction"
                )
        else:
            keep = int(round(n * data.label_fraction))
            if keep < 1:
                raise ThawError(
                    f"--label-fraction {data.label_fraction:g} leaves class {name!r} ({n} training images) "
                    f"with no labelled image; use at least {1 / n:.3g}, or --labels-per-class 1"
                )
        for i in rng.permutation(idx)[keep:]:
            items[i].split = UNLABELLED


def _fraction_of_images(sources: Sources, items: list[Item], data: DataConfig, rng) -> None:
    """Multi-label: a seeded ``round(F * n)`` of the training images keep their labels."""
    if data.labels_per_class is not None:
        raise ThawError(
            f"--labels-per-class counts images per class; {sources.name} is multi-label (an image counts "
            f"for several labels): use --label-fraction"
        )
    train = [i for i, it in enumerate(items) if it.split == "train"]
    keep = int(round(len(train) * data.label_fraction))
    if keep < 1:
        raise ThawError(
            f"--label-fraction {data.label_fraction:g} leaves none of the {len(train)} training images; "
            f"use at least {1 / len(train):.3g}"
        )
    for i in rng.permutation(train)[keep:]:
        items[i].split = UNLABELLED
    before = np.asarray([items[i].label for i in train]).sum(0)
    after = np.asarray([it.label for it in items if it.split == "train"]).sum(0)
    lost = [name for name, b, a in zip(sources.class_names, before, after) if b and not a]
    if lost:
        raise ThawError(
            f"--label-fraction {data.label_fraction:g} leaves label(s) {', '.join(lost)} without a positive "
            f"training image; raise the fraction, or try another --label-seed"
        )


def budget_text(data: DataConfig) -> str:
    if data.labels_per_class is not None:
        return f"{data.labels_per_class}/class"
    return f"{100 * data.label_fraction:g}%"


def budget_record(sources: Sources, data: DataConfig, seed: int) -> dict | None:
    """What ``summary.json`` says about the budget: labelled and unlabelled counts per class (multi-label:
    positive images per label)."""
    if not has_budget(data):
        return None

    def count(split: str) -> list[int]:
        if sources.multilabel:
            labels = [it.label for it in sources.split(split)]
            return np.asarray(labels, dtype=np.int64).reshape(-1, len(sources.class_names)).sum(0).tolist()
        items = sources.split(split)
        return [sum(1 for it in items if it.label == c) for c in range(len(sources.class_names))]

    return {
        "budget": budget_text(data),
        "labels_per_class": data.labels_per_class,
        "label_fraction": data.label_fraction,
        "seed": data.label_seed if data.label_seed is not None else seed,
        "labelled": count("train"),
        "unlabelled": count(UNLABELLED),
    }


def folder_items(path: str, flag: str) -> list[Item]:
    """Every image under ``path`` (searched recursively), unlabelled (label -1)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ThawError(f"{flag} {path}: no such folder; give a folder of unlabelled images")
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
    if not files:
        raise ThawError(
            f"{flag} {path}: the folder has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            f"give a folder of unlabelled images"
        )
    return [Item(str(f), -1, UNLABELLED) for f in files]
