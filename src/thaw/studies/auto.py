"""``thaw fit DATA --strategy auto --time-budget SECONDS``: successive halving over candidate recipes within
a wall-time budget, the default recipe replaced only by a challenger that beats it beyond noise.

Every run is an ordinary thaw run folder under ``OUT.incomplete/auto/``, all on one split (``auto/split.csv``,
written once) and one seed; phase 1's cached features are computed once and shared through the feature
cache (keyed by the backbone and the images, not the strategy).

1. **The incumbent first**: the default recipe (``two-phase`` with the user's settings) at its full budget,
   in ``auto/incumbent``. Running it first, rather than as one more rung-0 entry, makes it the floor
   (whatever the budget or a kill leaves, the user has the model ``thaw fit`` would have made), lets its
   measured wall time calibrate the cost estimates of every later run, and sets the budget when
   ``--time-budget`` is not given: twice that time (the issue's target: at 2x the default's wall time,
   auto is never below the default, because it *is* the default unless a challenger wins beyond noise).
2. **Rung 0**: every challenger of :data:`CANDIDATES` with a short phase 2: ``phase2.epochs`` the first step
   of a doubling ladder that ends at the full budget (:func:`ladder`; the warmup scaled with it), lowered
   towards 1 epoch until the whole rung fits the budget left, then as many challengers as still fit, in
   the order listed. A challenger whose plans do not depend on ``phase2.epochs`` (``linear-probe``) is
   complete at rung 0 and is carried to later rungs without a rerun.
3. **Rung r+1**: the better half of rung r (:func:`_rank`: the validation metric ``--monitor`` keeps the
   phase with, accuracy by default, of the saved model, then of the last plan, then the last plan's
   validation loss) at the next step of the ladder, if the time used so far plus the rung's estimated
   cost (each survivor's measured seconds at rung r, its phase-2 seconds scaled to the new epochs) fits
   the budget; with fewer epochs where the full step does not fit; else the search stops there. It ends
   when one challenger is left or every one left is at the full budget.
4. **The decision** (:func:`challenger_wins`): the top challenger of the last rung against the incumbent,
   on the same validation images, by a paired bootstrap of the difference of that metric between the two
   saved models (images resampled, both models' predictions together). The challenger replaces the
   default only when the one-sided lower bound of the difference is above 0 at 90% confidence for the
   whole search: the 10% is split over the challengers screened (Bonferroni), because the top challenger
   was picked as the best of them on these same images and its lead is inflated by that pick (the
   winner's curse). On a small validation set the default is therefore kept unless a challenger leads by a
   margin the images can show. Repeated or k-fold splits of train+val would measure the same with less
   noise, but every candidate would cost k runs: more than the whole 2x budget on a CPU, so they are not
   used; ``thaw compare`` over seeds, or ``thaw fit --folds K`` of the chosen recipe, measure more when
   the time is there.
5. **The run folder** ``OUT`` is the winner's run at the last budget it trained with (the incumbent's when
   the default is kept), hard-linked (or copied) from ``auto/``: ``config.yaml`` is that recipe, so
   ``thaw fit --config OUT/config.yaml`` retrains it without a search; ``summary.json`` gains an ``auto``
   field (the screening table, the decision and why, the budget and the time used) and ``report.html``
   a screening section. The screening runs keep their model, summary and report; their per-plan
   ``checkpoints/`` are deleted to save disk.

``auto/auto.json`` records the command. Rerunning it (or ``thaw resume OUT.incomplete``) skips finished
runs, resumes an interrupted one and replays the decisions recorded in ``auto/state.json`` (the rungs and
their members, the runs' measured seconds, the time used), so a resumed search makes the same choices;
time lost to a kill since the last record is not counted. A different command into the folder is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thaw import data as thaw_data
from thaw.core import run_folder
from thaw.core.config import AUTO, RunConfig, batchnorm_policy, bn_min_batch, override
from thaw.core.decoding import DECODE_ERRORS
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_atomic
from thaw.core.results import MONITORED, RunSummary, dumps
from thaw.core.run_folder import CONFIG, SUMMARY, RunFiles, check_outside_data, final_path, staging_path
from thaw.core.strategies import plans_for
from thaw.data import discover
from thaw.data.decoded import open_image
from thaw.models import load_model
from thaw.studies.runner import Cell, Executor, run_cell, run_cells
from thaw.use.predictor import Predictor
from thaw.use.reporting.html import write_report
from thaw.use.run import RunResult

INCUMBENT = "two-phase"

CANDIDATES: tuple[dict[str, Any], ...] = (
    {"name": INCUMBENT, "overrides": {"strategy": "two-phase"}},
    {"name": "head-own-lr", "overrides": {"strategy": "two-phase", "phase2_head_lr": "lr"}},
    {"name": "finetune-low-lr", "overrides": {"strategy": "finetune-low-lr"}},
    {"name": "surgical-last", "overrides": {"strategy": "surgical-last"}},
    {"name": "lr-ratio-100", "overrides": {"strategy": "two-phase", "lr_ratio": 100.0}},
    {"name": "bn-frozen", "overrides": {"strategy": "two-phase", "bn_policy": "frozen"}},
    {"name": "bn-tracked", "overrides": {"strategy": "two-phase", "bn_policy": "tracked"}},
    {"name": "bn-matched", "overrides": {"strategy": "two-phase", "bn_policy": "matched"}},
    {"name": "augment-none", "overrides": {"strategy": "two-phase", "data.augment": "none"}},
    {"name": "augment-light", "overrides": {"strategy": "two-phase", "data.augment": "light"}},
    {"name": "bitfit", "overrides": {"strategy": "bitfit"}},
    {"name": "norm-only", "overrides": {"strategy": "norm-only"}},
    {"name": "lora", "overrides": {"strategy": "lora"}},
    {"name": "ssf", "overrides": {"strategy": "ssf"}},
    {"name": "linear-probe", "overrides": {"strategy": "linear-probe"}},
)
"""The recipes auto tries, as config overrides on the user's settings; the first is the incumbent. The
linear probe comes last: it is the cheapest, and it rarely wins (two-phase's phase 1 *is* that probe, and
two-phase keeps it when phase 2 does not raise validation accuracy). ``head-own-lr`` trains phase 2's solved
head at its own LR instead of the backbone's (thaw's default before issue 25; LP-FT, Kumar et al. 2022, is
the default's own phase 2 now, so it is not listed twice). ``bitfit``, ``norm-only``, ``lora`` and
``ssf`` move fewer weights in phase 2 (``PhasePlan.trainable``). The batch-norm policies other than the
user's: ``bn-frozen`` holds batch norm on its pretrained statistics (the Keras guide's advice), ``bn-tracked``
also moves those statistics with the weights (``thaw.train.tracked``), ``bn-matched`` (the default, so
left out unless another policy was given) trains it from phase 1's features
(``thaw.train.tracked.MatchedStatistics``; not on batches of fewer than 8 images). ``data.augment`` values are
``--augment`` policies; the default, ``auto``, is the incumbent's. A candidate the user's settings rule
out, or that they make the same as one before it, is left out with why (:func:`candidates`)."""

OPENING = 2  # the fewest phase-2 epochs a screen runs: the first one is the opening, not the trend
LEVEL = 0.10  # one-sided error of the whole search: split over the challengers screened
RESAMPLES = 2000  # paired bootstrap resamples of the validation images
BUDGET_FACTOR = 2.0  # no --time-budget: this many times the incumbent's own run
METHOD = (
    "successive halving: the default recipe first at its full budget; every challenger at a short phase 2, "
    "the better half (by the saved model's validation metric, then its last plan's, then that plan's "
    "validation loss) continued with a doubled phase-2 budget while the time budget allows; the top "
    "challenger replaces the default only if a paired bootstrap over the validation images puts the "
    "one-sided lower bound of its lead above 0, at 90% confidence for the whole search (Bonferroni over "
    "the challengers screened)"
)


@dataclass(frozen=True)
class Candidate:
    """One recipe: its name, the overrides as listed, the user's config with them at the full phase-2
    budget, and the plans whose epochs follow ``phase2.epochs`` (none: one run serves every rung)."""

    name: str
    overrides: dict[str, Any]
    config: RunConfig
    scaled: tuple[str, ...]

    def at(self, epochs: int, out: Path, split: Path) -> RunConfig:
        """The run config at ``epochs`` of phase 2 (the warmup scaled with them), into ``out``."""
        full = self.config.phase2
        changes: dict[str, Any] = {"out": str(out), "data.split_file": str(split)}
        if self.scaled:
            changes["phase2.epochs"] = epochs
            changes["phase2.warmup_epochs"] = full.warmup_epochs * epochs / full.epochs
            changes["phase2.head_warmup_epochs"] = full.head_warmup_epochs * epochs / full.epochs
        return override(self.config, changes)


def candidates(
    config: RunConfig, listed: tuple[dict[str, Any], ...] | None = None
) -> tuple[list[Candidate], list[dict[str, Any]]]:
    """The candidates this config can run, the incumbent first, and those left out with why (settings that
    rule the recipe out, or make it the same as one before it: ``lr-ratio-100`` with ``--lr-ratio 100``)."""

    listed = listed or CANDIDATES
    assert listed[0]["name"] == INCUMBENT, "the incumbent comes first"
    base = override(config, {"strategy": INCUMBENT, "time_budget": None, "out": None}, keep_none=True)
    held = batchnorm_policy(base.bn_policy, base.data.batch_size)  # as the run holds it (preflight)
    base = override(base, {"bn_policy": held}) if held != base.bn_policy else base
    kept: list[Candidate] = []
    left: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for c in listed:
        try:
            cfg = override(base, c["overrides"]).validate()
            one = {p.name: p.epochs for p in plans_for(override(cfg, {"phase2.epochs": 1}))}
            two = {p.name: p.epochs for p in plans_for(override(cfg, {"phase2.epochs": 2}))}
        except ThawError as err:  # a recipe these settings rule out; the user's own recipe must run
            if c["name"] == INCUMBENT:
                raise
            left.append({"candidate": c["name"], "overrides": c["overrides"], "why": f"not here: {err}"})
            continue
        least = bn_min_batch(cfg.bn_policy)
        if cfg.data.batch_size < least and cfg.bn_policy != base.bn_policy:
            why = f"not here: --bn-policy {cfg.bn_policy} trains batch norm on batches of {least} or more"
            left.append({"candidate": c["name"], "overrides": c["overrides"], "why": why})
            continue
        key = json.dumps(cfg.to_dict(), sort_keys=True, default=str)
        if key in seen:  # e.g. augment-none under --augment none
            why = f"the same recipe as {seen[key]}"
            left.append({"candidate": c["name"], "overrides": c["overrides"], "why": why})
            continue
        seen[key] = c["name"]
        scaled = tuple(name for name in two if one.get(name) != two[name])
        kept.append(Candidate(c["name"], dict(c["overrides"]), cfg, scaled))
    return kept, left


def ladder(full: int, challengers: int) -> list[int]:
    """Phase-2 epochs per rung: one rung per halving of ``challengers`` (7 -> 4 -> 2 -> 1: 4 rungs), the
    epochs doubling up to ``full`` (10: 2, 3, 5, 10), so that every rung costs about the same; never fewer
    than ``OPENING`` (a first epoch alone shows a recipe's opening, not where it is going)."""
    rungs = 1 + math.ceil(math.log2(max(challengers, 1)))
    return [max(min(OPENING, full), math.ceil(full / 2 ** (rungs - 1 - r))) for r in range(rungs)]


# ------------------------------------------------------------------------------------------ the decision


def challenger_wins(
    labels,
    incumbent,
    challenger,
    metric: str = "accuracy",
    challengers: int = 1,
    level: float = LEVEL,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Whether the challenger's model beats the incumbent's beyond noise on the same images: a paired
    bootstrap (``resamples`` resamples of the images, both models' probabilities ``[N, C]`` together) of
    the difference in ``metric`` (challenger - incumbent). It wins when the observed difference is
    positive and its one-sided lower bound at ``1 - level / challengers`` confidence (Bonferroni over the
    challengers it was picked from) is above 0. Multi-label labels ``[N, K]``: label-wise accuracy."""
    y, a, b = np.asarray(labels), np.asarray(incumbent, dtype=float), np.asarray(challenger, dtype=float)
    if y.ndim == 2:
        metric = "accuracy"
    alpha = level / max(challengers, 1)
    n = len(y)
    rng = np.random.default_rng(seed)
    if metric == "accuracy":  # per-image scores: vectorised, in chunks
        d = _correct(y, b) - _correct(y, a)
        chunks = []
        for start in range(0, resamples, 256):
            idx = rng.integers(0, n, size=(min(256, resamples - start), n))
            chunks.append(d[idx].mean(axis=1))
        diffs = np.concatenate(chunks) if chunks else np.empty(0)
    else:
        diffs = np.empty(resamples)
        for i in range(resamples):
            idx = rng.integers(0, n, size=n)
            diffs[i] = _score(y[idx], b[idx], metric) - _score(y[idx], a[idx], metric)
        diffs = diffs[np.isfinite(diffs)]  # a resample with one class has no AUC
    mine, theirs = _score(y, b, metric), _score(y, a, metric)
    observed = mine - theirs
    lower = float(np.quantile(diffs, alpha)) if len(diffs) else math.nan
    wins = bool(math.isfinite(observed) and observed > 0 and math.isfinite(lower) and lower > 0)
    return {
        "metric": "label-wise accuracy" if y.ndim == 2 else metric,
        "images": n,
        "incumbent_value": theirs,
        "challenger_value": mine,
        "difference": observed,
        "lower_bound": lower,
        "confidence": 1 - alpha,
        "level": level,
        "challengers": challengers,
        "resamples": int(len(diffs)),
        "wins": wins,
    }


def _correct(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per image: 1.0 when the argmax is right (multi-label: the share of labels right at 0.5)."""
    if y.ndim == 2:
        return ((p >= 0.5) == (y > 0.5)).mean(axis=1)
    return (p.argmax(axis=1) == y).astype(float)


def _score(y: np.ndarray, p: np.ndarray, metric: str) -> float:
    """``metric`` of probabilities ``p`` [N, C] against labels ``y`` [N], as thaw's metrics define it
    (argmax predictions; AUC binary of class 1, multiclass macro one-vs-rest; NaN without two classes)."""
    if metric == "accuracy" or y.ndim == 2:
        return float(_correct(y, p).mean())
    pred = p.argmax(axis=1)
    classes = range(p.shape[1])
    if metric == "balanced_accuracy":
        return float(np.mean([(pred[y == c] == c).mean() for c in classes if (y == c).any()]))
    if metric == "macro_f1":
        f1 = []
        for c in classes:
            tp, fp, fn = (
                ((pred == c) & (y == c)).sum(),
                ((pred == c) & (y != c)).sum(),
                ((pred != c) & (y == c)).sum(),
            )
            if tp + fp + fn:
                f1.append(2 * tp / (2 * tp + fp + fn))
        return float(np.mean(f1))
    if metric == "auc":
        if p.shape[1] == 2:
            return _auc(y == 1, p[:, 1])
        aucs = [_auc(y == c, p[:, c]) for c in classes]
        aucs = [a for a in aucs if math.isfinite(a)]
        return float(np.mean(aucs)) if len(aucs) >= 2 else math.nan
    raise ValueError(f"unknown metric {metric}")


def _auc(positive: np.ndarray, score: np.ndarray) -> float:
    from scipy.stats import rankdata

    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if not n1 or not n0:
        return math.nan
    return float((rankdata(score)[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


# ------------------------------------------------------------------------------------------ the search


class State:
    """``auto/state.json``: the decisions made so far (budget, rungs and their members, runs skipped) and
    what was measured (each run's wall seconds, the time used), so a rerun replays them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = (
            json.loads(path.read_text()) if path.is_file() else {"spent": 0.0, "runs": {}, "rungs": []}
        )
        self._before, self._start = float(self.data["spent"]), time.monotonic()

    def spent(self) -> float:
        return self._before + time.monotonic() - self._start

    def save(self) -> None:
        self.data["spent"] = round(self.spent(), 2)
        write_atomic(self.path, dumps(self.data))


def is_auto(path: str | Path) -> bool:
    """Whether ``path`` (``OUT`` or ``OUT.incomplete``) is an unfinished ``--strategy auto`` search."""
    return (staging_path(final_path(Path(path))) / "auto" / "auto.json").is_file()


def resume_auto(path: str | Path, quiet: bool = False):
    """Finish the auto search in ``path`` with the command recorded in its ``auto/auto.json``."""
    marker = staging_path(final_path(Path(path))) / "auto" / "auto.json"
    return fit_auto(RunConfig.from_dict(json.loads(marker.read_text())["config"]), quiet=quiet)


def fit_auto(
    config: RunConfig,
    sources=None,
    quiet: bool = False,
    plans=None,
    listed: tuple[dict[str, Any], ...] | None = None,
    say: Callable[[str], None] | None = None,
    executor: Executor | None = None,
):
    """Search the recipes of ``listed`` within ``config.time_budget`` seconds (none: twice the default
    recipe's own run) and write the winner's run folder to ``config.out``, with the screening record.
    Returns a :class:`thaw.use.run.RunResult`; rerunning the same call resumes an interrupted search."""
    _check(config, plans)
    executor = (executor or Executor()).check()
    listed = listed or CANDIDATES
    say = say or ((lambda text: None) if quiet else print)
    if sources is None:
        sources = discover(config.data)
    out = Path(config.out) if config.out else run_folder.default_out(sources.name, config.model.name)
    config = override(config, {"out": str(out)})
    cands, left = candidates(config, listed)
    root = _prepare(config, out, [c["name"] for c in listed], sources)
    try:
        state = State(root / "auto" / "state.json")
        record, winner = _search(root, cands, left, config, state, say, executor)
        return _finish(root, out, config, record, winner, quiet)
    except BaseException:
        run_folder.active = root  # an interrupted command names the search, not the run inside it
        raise


def _check(config: RunConfig, plans) -> None:
    config.validate()
    if config.strategy != AUTO:
        raise ThawError(f"fit_auto runs --strategy auto, not {config.strategy}")
    if plans is not None:
        raise ThawError("--strategy auto chooses the plans itself: give plans or strategy auto, not both")
    if config.auto:
        raise ThawError(
            f"--strategy auto takes numbers for {' and '.join(config.auto)} (its candidates change "
            f"lr_ratio); find them first with thaw lr-find, or leave the defaults"
        )
    if config.phase2.epochs < 1:
        raise ThawError("--strategy auto screens phase-2 budgets: give --phase2-epochs 1 or more")
    if config.hardware.devices > 1 or config.hardware.num_nodes > 1:
        raise ThawError(
            "--strategy auto runs on one device; use --devices 1 (or thaw compare across devices)"
        )


def _prepare(config: RunConfig, out: Path, names: list[str], sources) -> Path:
    """Create (or reopen, for the same command) ``OUT.incomplete/auto`` with the command and the split."""

    root = staging_path(out)
    marker = root / "auto" / "auto.json"
    spec = {"command": "thaw fit --strategy auto", "candidates": names, "config": config.to_dict()}
    if out.exists():
        raise ThawError(
            f"run folder {out} already exists; choose another --out (thaw never overwrites a run)"
        )
    if root.exists():
        if not marker.is_file():
            raise ThawError(
                f"{root} holds an interrupted run that is not an auto search: continue it with "
                f"`thaw resume {root}`, or choose another --out"
            )
        if json.loads(marker.read_text()) != json.loads(dumps(spec)):
            raise ThawError(
                f"{root} holds an auto search made by a different command (settings or candidates differ; "
                f"see its auto/auto.json); rerun that command or `thaw resume {root}`, or give another --out"
            )
    else:
        check_outside_data(out, config.data.path)
        try:
            (root / "auto").mkdir(parents=True)
        except OSError as err:
            raise ThawError(f"cannot create {root} ({err.strerror}); choose a writable --out") from err
        write_atomic(marker, dumps(spec))
    if not (root / "auto" / "split.csv").is_file():
        with atomic_path(root / "auto" / "split.csv") as tmp:
            thaw_data.write_split(sources, tmp)
    return root


def _run_all(
    root: Path, runs: list[tuple[str, Callable[[Path], RunConfig]]], state: State, executor: Executor | None
) -> dict[str, RunSummary]:
    """The finished runs ``auto/<rel>`` of ``runs``, made as cells of one study (on Ray: at once)."""
    cells = [Cell(f"auto/{rel}", root / "auto" / rel, make(root / "auto" / rel)) for rel, make in runs]
    if executor is not None and executor.kind == "ray":
        seconds = run_cells(cells, executor, say=lambda text: None)
    else:
        seconds = {}
        for cell in (c for c in cells if not c.done):  # each run's own result table goes to auto/runs.log
            with open(root / "auto" / "runs.log", "a") as log, contextlib.redirect_stdout(log):
                print(f"\n==== {cell.label}", flush=True)
                seconds[cell.path] = run_cell(cell, executor.threads if executor else None)
    out = {}
    for (rel, _), cell in zip(runs, cells, strict=True):
        if seconds.get(cell.path):
            state.data["runs"][rel] = {"seconds": round(seconds[cell.path], 2)}
            state.save()
        out[rel] = summary = RunSummary.read(cell.path)
        if rel not in state.data["runs"]:  # finished by a process killed before it recorded the time
            state.data["runs"][rel] = {"seconds": round(sum(p.seconds for p in summary.phases.values()), 2)}
    return out


def _measured(summary: RunSummary, seconds: float, scaled: tuple[str, ...]) -> tuple[float, float]:
    """(seconds outside phase-2 training, seconds per phase-2 epoch) of a finished run."""
    trained = [summary.phases[n] for n in scaled if n in summary.phases]
    train_s, epochs = sum(p.seconds for p in trained), sum(p.epochs_run for p in trained)
    return max(seconds - train_s, 0.0), train_s / epochs if epochs else 0.0


def _search(
    root: Path,
    cands: list[Candidate],
    left: list[dict[str, Any]],
    config: RunConfig,
    state: State,
    say: Callable[[str], None],
    executor: Executor | None = None,
) -> tuple[dict[str, Any], tuple[str, str]]:
    """Run (or replay) the incumbent and the rungs; returns the record for summary.json and the winner
    (candidate name, run folder relative to ``auto/``)."""
    split = root / "auto" / "split.csv"
    incumbent, challengers = cands[0], cands[1:]
    by_name = {c.name: c for c in cands}
    full = incumbent.config.phase2.epochs
    metric = MONITORED[config.monitor]
    say(f"auto: {INCUMBENT} (the default) first, at its full budget of {full} phase-2 epochs")
    make = lambda p: incumbent.at(full, p, split)  # noqa: E731
    summaries: dict[str, RunSummary] = _run_all(root, [("incumbent", make)], state, executor)
    budget = _budget(config, state)
    say(f"auto: budget {budget:.0f} s ({state.data['budget_rule']}); {state.spent():.0f} s used")
    if policy_changed(summaries["incumbent"]) and "augment-none" in by_name:
        # the check changed the policy: screen phase 2 without augmentation too, first and whatever the
        # budget (issue 25: on a defect-tile set it was the recipe that won, and it was never screened)
        cands = [cands[0], by_name["augment-none"], *[c for c in challengers if c.name != "augment-none"]]
        challengers, by_name = cands[1:], {c.name: c for c in cands}
        state.data["always"] = ["augment-none"]
    estimate = _estimator(by_name, summaries, state)
    steps = ladder(full, len(challengers))
    rungs: list[dict[str, Any]] = state.data["rungs"]
    ranked: list[list[str]] = []  # per rung that ran, its members best first
    r = 0
    while challengers:
        if r == len(rungs):  # a new decision; a recorded one is replayed as it was made
            if state.data.get("stopped"):
                break
            plan = _plan_rung(r, rungs, ranked, by_name, steps, full, budget, state, estimate)
            if plan is None:
                break
            rungs.append(plan)
            state.save()
        rung = rungs[r]
        runs = _rung_runs(root, r, rung, by_name, estimate, budget, state, say, executor)
        summaries.update(_run_all(root, runs, state, executor) if runs else {})
        ran = [n for n in rung["members"] if n not in rung["skipped"]]
        ranked.append(_rank({n: summaries[rung["runs"][n]] for n in ran}, metric, list(by_name)))
        if len(ran) <= 1 or all(rung["epochs"] >= full or not by_name[n].scaled for n in ran):
            break  # one left, or every one left at the full budget
        r += 1
    return _decide(root, cands, left, rungs, ranked, summaries, state, config, metric)


def policy_changed(summary: RunSummary) -> bool:
    """Whether ``--augment auto``'s check changed the policy it started from (weakened or dropped an op)."""
    record = summary.augment or {}
    return record.get("setting") == "auto" and record.get("chosen", "") != record.get("started_from", "")


def _budget(config: RunConfig, state: State) -> float:
    """The search's budget: ``--time-budget``, else twice the incumbent's run; recorded once."""
    if "budget" not in state.data:
        given = config.time_budget
        state.data["budget"] = given if given is not None else round(BUDGET_FACTOR * state.spent(), 1)
        state.data["budget_rule"] = (
            "from --time-budget"
            if given is not None
            else f"{BUDGET_FACTOR:g}x the default recipe's run of {state.spent():.0f} s (no --time-budget)"
        )
        state.save()
    return float(state.data["budget"])


def _estimator(by_name: dict[str, Candidate], summaries: dict[str, RunSummary], state: State):
    """``estimate(name, epochs, before)``: the seconds a candidate's run at ``epochs`` of phase 2 takes, from
    its own run at the rung before, else the median of rung 0's runs so far, else the incumbent's."""

    def seconds(rel: str) -> float:
        return float(state.data["runs"].get(rel, {}).get("seconds", math.nan))

    reference = _measured(summaries["incumbent"], seconds("incumbent"), by_name[INCUMBENT].scaled)

    def estimate(name: str, epochs: int, before: str | None) -> float:
        c = by_name[name]
        if before is not None and math.isfinite(seconds(before)):  # its own run at the rung before
            overhead, per_epoch = _measured(summaries[before], seconds(before), c.scaled)
        else:  # rung 0: the median of the challengers measured so far, else the incumbent
            done = [
                _measured(summaries[r], seconds(r), by_name[r.split("/")[1]].scaled)
                for r in summaries
                if r.startswith("rung0/") and math.isfinite(seconds(r))
            ]
            overhead = float(np.median([d[0] for d in done])) if done else reference[0]
            per_epoch = float(np.median([d[1] for d in done if d[1]] or [reference[1]]))
        return overhead + (epochs * (per_epoch or reference[1]) if c.scaled else 0.0)

    return estimate


def _rung_runs(root, r, rung, by_name, estimate, budget, state, say, executor) -> list:
    """The runs of rung ``r`` that fit the budget left, in order; a member whose estimated run does not
    fit is skipped, with why. On Ray the runs are returned to run together (the estimated seconds of
    those before count as spent); else each one runs here before the next is checked."""
    queue = executor is not None and executor.kind == "ray"
    runs, queued = [], 0.0
    for name in rung["members"]:
        rel = rung["runs"][name]
        if name in rung["skipped"]:
            continue
        path = root / "auto" / rel
        started = (path / "summary.json").is_file() or staging_path(path).is_dir()
        need = 0.0 if started else estimate(name, rung["epochs"], rung["before"][name])
        left_s = budget - state.spent() - queued
        if need and need > left_s and not (r == 0 and name in state.data.get("always", [])):
            why = f"about {need:.0f} s needed, {max(left_s, 0):.0f} s of the budget left"
            rung["skipped"][name] = {"why": why, "needed_s": round(need, 1)}
            state.save()
            continue
        c, epochs = by_name[name], rung["epochs"]
        if not (path / "summary.json").is_file():
            budget_text = f"phase 2: {epochs} epochs" if c.scaled else "no phase 2"
            say(f"auto: rung {r}, {name} ({budget_text}) in auto/{rel}")
        make = lambda p, c=c, e=epochs: c.at(e, p, split=root / "auto" / "split.csv")  # noqa: E731
        if queue:
            runs.append((rel, make))
            queued += need
        else:
            _run_all(root, [(rel, make)], state, executor)
            runs.append((rel, make))  # finished now: read back with the others
    return runs


def _plan_rung(r, rungs, ranked, by_name, steps, full, budget, state, estimate) -> dict[str, Any] | None:
    """The members and phase-2 epochs of rung ``r``, fitted to the budget left: rung 0 every challenger at
    the ladder's first step, lowered towards 1 epoch until the rung fits (the runs that still do not fit
    are skipped one by one as it runs); rung r+1 the better half of rung r at the next step (the full
    budget for a last single survivor), lowered towards one epoch more than rung r until it fits. None,
    with why recorded, when no option fits."""
    left = budget - state.spent()
    if r == 0:
        members = list(by_name)[1:]
        # never below OPENING phase-2 epochs: a recipe's first epoch is its opening, not its trend
        options = list(range(steps[0], min(OPENING, full) - 1, -1))
        runs = {n: f"rung0/{n}" for n in members}
        before: dict[str, str | None] = {n: None for n in members}
        fresh = members
    else:
        prev = rungs[r - 1]
        members = ranked[r - 1][: math.ceil(len(ranked[r - 1]) / 2)]
        target = full if len(members) == 1 else steps[min(r, len(steps) - 1)]
        options = list(range(max(target, prev["epochs"] + 1), prev["epochs"], -1))
        fresh = [n for n in members if by_name[n].scaled]  # the others: their one run is carried
        runs = {n: f"rung{r}/{n}" if n in fresh else prev["runs"][n] for n in members}
        before = {n: prev["runs"][n] if n in fresh else None for n in members}
    need = 0.0
    for epochs in options:
        need = sum(estimate(n, epochs, before[n]) for n in fresh)
        if need <= left or r == 0 and epochs == options[-1]:
            return {
                "rung": r,
                "epochs": epochs,
                "members": members,
                "runs": runs,
                "before": before,
                "skipped": {},
            }
    state.data["stopped"] = (
        f"the search stopped before rung {r}: {len(fresh)} run(s) at {options[-1] if options else '?'} or "
        f"more phase-2 epochs would take about {need:.0f} s, and {max(left, 0):.0f} s of the "
        f"{budget:.0f} s budget were left"
    )
    state.save()
    return None


def _rank(results: dict[str, RunSummary], metric: str, order: list[str]) -> list[str]:
    """Best first: the saved model's validation metric, then its last plan's (on a short phase 2 the saved
    model is often phase 1's for every recipe, which share it: the last plan's score is what tells the
    recipes apart), then the last plan's validation loss, then the order listed."""

    def key(name: str):
        summary = results[name]
        last = summary.phases[list(summary.phases)[-1]].val
        return (
            -_finite(getattr(summary.final.val, metric)),
            -_finite(getattr(last, metric)),
            -_finite(-last.loss),
            order.index(name),
        )

    return sorted(results, key=key)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


# ------------------------------------------------------------------------------------------ the outcome


def _decide(root, cands, left, rungs, ranked, summaries, state, config, metric):
    """The top challenger of the last rung against the incumbent (:func:`challenger_wins`), and the record
    for summary.json: the screening table, the decision, the budget and the time used."""
    by_name = {c.name: c for c in cands}
    tried = len(ranked[0]) if ranked else 0
    finalist = ranked[-1][0] if ranked and ranked[-1] else None
    n_rung = len(ranked) - 1
    decision: dict[str, Any] = {"wins": False}
    if finalist is None:
        line = f"auto: kept {INCUMBENT} (the default) because no challenger " + (
            f"fitted in the {state.data['budget']:.0f} s budget after the default's own run of "
            f"{state.data['runs']['incumbent']['seconds']:.0f} s (the first needed about "
            f"{next(iter(rungs[0]['skipped'].values()))['needed_s']:.0f} s)"
            if rungs and rungs[0]["skipped"]
            else "was listed"
        )
    else:
        rel = rungs[n_rung]["runs"][finalist]
        y, a, b = _paired_predictions(root / "auto" / "incumbent", root / "auto" / rel)
        decision = challenger_wins(y, a, b, metric, tried, seed=config.seed)
        budget = (
            f"rung {n_rung}, {rungs[n_rung]['epochs']} phase-2 epochs"
            if by_name[finalist].scaled
            else "rung 0"
        )
        line = _reason(decision, finalist, budget, metric, tried)
    winner = (finalist, rungs[n_rung]["runs"][finalist]) if decision["wins"] else (INCUMBENT, "incumbent")
    record = {
        "method": METHOD,
        "metric": metric,
        "budget_s": state.data["budget"],
        "budget_rule": state.data["budget_rule"],
        "time_used_s": round(state.spent(), 1),
        "ladder": ladder(by_name[INCUMBENT].config.phase2.epochs, len(cands) - 1),
        "stopped": state.data.get("stopped"),
        "table": _table(cands, left, rungs, ranked, summaries, state, metric, winner),
        "decision": decision,
        "winner": winner[0],
        "winner_run": f"auto/{winner[1]}",
        "reason": line,
    }
    return record, winner


def _reason(decision: dict[str, Any], finalist: str, budget: str, metric: str, tried: int) -> str:
    """The one line that says why the finalist replaced the default, or why the default was kept."""
    d, lb, conf = decision["difference"], decision["lower_bound"], decision["confidence"]
    where = f"{decision['images']} validation images"
    if decision["wins"]:
        return (
            f"auto: chose {finalist} ({budget}) because its validation {decision['metric']} was "
            f"{_lead(d, metric)} above {INCUMBENT}'s ({where}), and the paired bootstrap's "
            f"{conf:.1%} one-sided lower bound of that lead, {_lead(lb, metric)}, is above 0 "
            f"({1 - LEVEL:.0%} for the search, split over {tried} challengers)"
        )
    if d > 0:
        return (
            f"auto: kept {INCUMBENT} (the default) because the best challenger, {finalist} ({budget}), "
            f"led by {_lead(d, metric)} of validation {decision['metric']} ({where}): within noise, the "
            f"paired bootstrap's {conf:.1%} one-sided lower bound of its lead is {_lead(lb, metric)}"
        )
    return (
        f"auto: kept {INCUMBENT} (the default) because no challenger scored higher on validation "
        f"{decision['metric']}: the best, {finalist} ({budget}), was {_lead(d, metric)} ({where})"
    )


def _lead(x: float, metric: str) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.3f}" if metric in ("auc", "macro_f1") else f"{100 * x:+.1f} points"


def _table(cands, left, rungs, ranked, summaries, state, metric, winner) -> list[dict[str, Any]]:
    """One row per run (the incumbent's, then each rung's, best first), then the runs not made, and why."""
    by_name = {c.name: c for c in cands}

    def row(name: str, rung, epochs: int, rel: str | None, status: str, why: str) -> dict[str, Any]:
        val = summaries[rel].final.val if rel in summaries else None
        last = summaries[rel].phases[list(summaries[rel].phases)[-1]].val if rel in summaries else None
        return {
            "candidate": name,
            "overrides": by_name[name].overrides if name in by_name else {},
            "rung": rung,
            "phase2_epochs": epochs if name not in by_name or by_name[name].scaled else 0,
            "path": f"auto/{rel}" if rel else None,
            "val_accuracy": val.accuracy if val else None,
            "val_loss": val.loss if val else None,
            "val_auc": val.auc if val else None,
            "val_metric": getattr(val, metric) if val else None,
            "last_plan_val_metric": getattr(last, metric) if last else None,  # the tie-break of the rank
            "seconds": state.data["runs"].get(rel, {}).get("seconds") if rel else None,
            "status": status,
            "why": why,
        }

    full = by_name[INCUMBENT].config.phase2.epochs
    kept = winner[0] == INCUMBENT
    rows = [
        row(
            INCUMBENT,
            "default",
            full,
            "incumbent",
            "winner" if kept else "replaced",
            "the default recipe at its full budget, run first: the reference every challenger must beat "
            + ("(kept)" if kept else f"(replaced by {winner[0]})"),
        )
    ]
    for r, order in enumerate(ranked):
        rung = rungs[r]
        for i, name in enumerate(order):
            rel = rung["runs"][name]
            status, why = _status(r, i, name, order, rungs, len(ranked), winner)
            if r and rel == rungs[r - 1]["runs"].get(name):
                why += f"; the run of rung {r - 1} again (no phase 2 to lengthen)"
            rows.append(row(name, r, rung["epochs"], rel, status, why))
        rows += [row(n, r, rung["epochs"], None, "not run", s["why"]) for n, s in rung["skipped"].items()]
    if state.data.get("stopped"):
        rows.append(
            {**row(INCUMBENT, len(ranked), 0, None, "stopped", state.data["stopped"]), "candidate": "-"}
        )
    rows += [
        {**row(c["candidate"], "-", 0, None, "left out", c["why"]), "overrides": c["overrides"]} for c in left
    ]
    return rows


def _status(r: int, i: int, name: str, order: list[str], rungs, last: int, winner) -> tuple[str, str]:
    """The status of rung ``r``'s ``i``-th best run and why: promoted, winner, finalist or dropped."""
    promoted = rungs[r + 1]["members"] if r + 1 < len(rungs) else []
    rank = f"rank {i + 1} of {len(order)}"
    if name in promoted:
        return "promoted", f"{rank}: in the better half, on to rung {r + 1}"
    if r == last - 1 and i == 0:
        status = "winner" if winner[0] == name else "finalist"
        why = (
            "beat the default beyond noise" if status == "winner" else "not beyond noise: the default is kept"
        )
        return status, f"{rank}: the top of the last rung; {why}"
    return "dropped", f"{rank}: " + ("below the better half" if promoted else "the search ended at this rung")


def _paired_predictions(incumbent: Path, challenger: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and both saved models' probabilities on the validation images they share, in one order."""
    a, b = _val_predictions(incumbent), _val_predictions(challenger)
    common = [k for k in a if k in b]
    if not common:
        raise ThawError(
            f"{incumbent} and {challenger} share no validation image; were they made on one split?"
        )
    y = np.array([a[k][0] for k in common])
    return y, np.stack([a[k][1] for k in common]), np.stack([b[k][1] for k in common])


def _val_predictions(run: Path) -> dict[str, tuple[Any, np.ndarray]]:
    """key -> (label, probabilities) of the run's saved model on its validation split (from split.csv):
    those the run stored (center crop, no TTA), else computed here."""
    files = RunFiles(run)
    stored = files.read_predictions().get("val")
    if stored is not None and not stored.tta:  # computed once at the end of the run
        return {k: (y, p) for k, y, p in zip(stored.keys, stored.labels.tolist(), stored.probs, strict=True)}
    sources = discover(files.split_data())
    predictor = Predictor.load(run)
    index = {c: i for i, c in enumerate(predictor.class_names)}
    keys, labels, images = [], [], []
    for it in sources.split("val"):
        try:
            images.append(open_image(it, 3, predictor.window))
        except DECODE_ERRORS:
            continue
        keys.append(it.key)
        labels.append(it.label if sources.multilabel else index[sources.class_names[it.label]])
    probs = predictor.predict_proba(images).numpy()
    return {k: (y, p) for k, y, p in zip(keys, labels, probs, strict=True)}


def _finish(root: Path, out: Path, config: RunConfig, record: dict, winner: tuple[str, str], quiet: bool):
    """Make ``OUT`` the winner's run folder (hard links into the staging folder), with the record in its
    summary.json and report.html; drop the screening runs' per-plan checkpoints; commit the folder."""

    source = root / "auto" / winner[1]
    for f in sorted(source.rglob("*")):
        target = root / f.relative_to(source)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)
    chosen = RunFiles(source).config()
    chosen = override(chosen, {"out": str(out), "data.split_file": config.data.split_file}, keep_none=True)
    write_atomic(root / CONFIG, chosen.to_yaml())  # a new file: the linked original is untouched
    summary = dataclasses.replace(RunSummary.read(source), auto=record)
    write_atomic(root / SUMMARY, summary.to_json())
    write_report(root, warn=lambda text: print(f"warning: {text}", file=sys.stderr))
    for folder in sorted((root / "auto").glob("**/checkpoints")):
        shutil.rmtree(folder)
    root.rename(out)
    run_folder.active = None
    print_table(record)
    print(record["reason"])
    if not quiet:
        print(
            f"auto: run folder {out} (the {winner[0]} run of {record['winner_run']}); the screening runs "
            f"in {out / 'auto'}"
        )
    return RunResult(out, summary, load_model(RunFiles(out).model))


def print_table(record: dict) -> None:
    """The screening table on the console (rich)."""
    from rich.console import Console
    from rich.table import Table

    metric = record["metric"].replace("_", " ")
    table = Table(
        title=f"auto: {record['time_used_s']:.0f} s of a {record['budget_s']:.0f} s budget",
        caption=f"validation {metric} picks; the default is replaced only beyond noise",
    )
    for col in ("candidate", "rung", "p2 epochs", f"val {metric}", "val loss", "seconds", "status", "why"):
        table.add_column(
            col, justify="right" if col in ("rung", "p2 epochs", "val loss", "seconds") else "left"
        )
    for r in record["table"]:
        value = r["val_metric"]
        table.add_row(
            r["candidate"],
            str(r["rung"]),
            str(r["phase2_epochs"]) if r["path"] else "-",
            "-" if value is None else _value(value, record["metric"]),
            "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}",
            "-" if r["seconds"] is None else f"{r['seconds']:.0f}",
            r["status"],
            r["why"],
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=160, highlight=False)
    console.print(table)


def _value(x: float, metric: str) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.3f}" if metric in ("auc", "macro_f1") else f"{100 * x:.1f}"
