"""``thaw fit DATA --folds K``: stratified k-fold cross-validation, for data too small for one fixed
validation split.

The train and val images are pooled and cut into K stratified folds (seeded by ``--split-seed``); fold i
validates on part i and trains on the rest, the test split (if any) stays the test split of every fold.
Each fold is an ordinary run folder (``<out>/fold<i>/``); rerunning the command skips finished folds and
resumes an interrupted one. ``cv.json`` holds each fold's val (and test) metrics of the saved model and,
per metric, the mean, sd and a 95% confidence interval of the mean (Student's t with K - 1 degrees of
freedom): the folds' spread says how much one fixed validation split could have misled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.files import write_atomic
from thaw.core.results import GAIN_METRICS, dumps
from thaw.core.strategies import check_named
from thaw.data import discover
from thaw.data.sources import Sources
from thaw.metrics import stats
from thaw.studies.runner import Cell, Executor, run_cells, summaries
from thaw.train.preflight import refuse_multilabel


def fold_sources(sources: Sources, folds: int, seed: int) -> list[Sources]:
    """One copy of ``sources`` per fold: train+val pooled, fold i as val, the rest train, test kept."""
    from sklearn.model_selection import StratifiedKFold

    pool = [i for i, it in enumerate(sources.items) if it.split in ("train", "val")]
    labels = [sources.items[i].label for i in pool]
    smallest = min(labels.count(c) for c in set(labels))
    if folds < 2:
        raise ThawError(f"--folds {folds} must be at least 2")
    if smallest < folds:
        raise ThawError(
            f"--folds {folds}: a class has only {smallest} train+val image(s), fewer than the folds; "
            f"use --folds {max(2, smallest)} or fewer"
        )
    out = []
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for _, val_idx in splitter.split(pool, labels):
        val = {pool[j] for j in val_idx}
        items = [
            dataclasses.replace(it, split="val" if i in val else "train")
            if it.split in ("train", "val")
            else it
            for i, it in enumerate(sources.items)
        ]
        out.append(dataclasses.replace(sources, items=items, split_origin=f"{folds}-fold cv"))
    return out


def cross_validate(
    config: RunConfig, folds: int, out: Path, quiet: bool = True, say=print, executor: Executor | None = None
) -> dict:
    """Run (or finish) every fold under ``out`` and write ``cv.json``; returns what it holds."""
    config.validate()
    check_named(config)  # --strategy auto is a study of its own
    sources = discover(config.data)
    refuse_multilabel(sources, "--folds")
    parts = fold_sources(sources, folds, config.data.split_seed)
    executor = (executor or Executor()).check()
    out.mkdir(parents=True, exist_ok=True)
    cells = [
        Cell(f"fold {i}", out / f"fold{i}", override(config, {"out": str(out / f"fold{i}")}), sources=part)
        for i, part in enumerate(parts)
    ]
    run_cells(cells, executor, say)
    result = {
        "folds": folds,
        "split_seed": config.data.split_seed,
        "runs": [str(c.path) for c in cells],
        "per_fold": [
            {s: _metrics(r.final.on(s)) for s in ("val", "test") if r.final.on(s) is not None}
            for r in summaries(cells)
        ],
    }
    result["summary"] = {
        split: {m: interval([f[split][m] for f in result["per_fold"]]) for m in GAIN_METRICS}
        for split in ("val", "test")
        if all(split in f for f in result["per_fold"])
    }
    write_atomic(out / "cv.json", dumps(result))
    return result


def _metrics(m) -> dict:
    return {k: getattr(m, k) for k in GAIN_METRICS}


def interval(values: list[float]) -> dict:
    """Mean, sd and the 95% confidence interval of the mean (Student's t, n - 1 degrees of freedom)."""
    i = stats.interval(values)
    if not i.n:
        return {"mean": None, "sd": None, "ci95": None}
    return {"mean": i.mean, "sd": i.sd, "ci95": [i.low, i.high]}
