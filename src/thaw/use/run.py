"""A run, composed: check the config and name the run folder, resolve it once (``thaw.train.resolve``:
``--lr auto`` found), run the plans (``thaw.train.engine``), run the analyses after training
(``thaw.use.analyses``), and write the folder: ``summary.json``, ``metrics.csv``, the figures, the model,
its predictions and ``report.html``. ``thaw.fit`` and
``thaw.resume`` are these :func:`fit` and :func:`resume`."""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from thaw import data as thaw_data
from thaw.core.config import RunConfig, override, settings
from thaw.core.files import atomic_path, write_atomic, write_rows_csv
from thaw.core.resolved import Resolved
from thaw.core.results import MULTILABEL, SINGLE_LABEL, RunSummary, gains
from thaw.core.run_folder import (
    CONFIG,
    SUMMARY,
    FollowerRun,
    RunFiles,
    RunFolder,
    check_outside_data,
    default_out,
    final_path,
    staging_path,
)
from thaw.core.run_log import Reporter
from thaw.core.strategies import PhasePlan, strategy_name
from thaw.data.budget import apply_budget, budget_record
from thaw.models import Classifier, save_model
from thaw.models.state_dict import sha256
from thaw.train import adapt, distributed, preflight
from thaw.train.engine import Trained, train
from thaw.train.loggers import check_logger, track_result
from thaw.train.recipe import hardware_summary, quiet_lightning
from thaw.train.resolve import resolve
from thaw.use.analyses import ANALYSES, Analysis, Finding, final_split
from thaw.use.model_card import write_model_card
from thaw.use.reporting.figures import confusion, learning_curves, lr_find_plot
from thaw.use.reporting.html import write_report


@dataclass
class RunResult:
    path: Path
    summary: RunSummary
    model: Classifier


def fit(
    config: RunConfig,
    sources: thaw_data.Sources | None = None,
    quiet: bool = False,
    plans: list[PhasePlan] | None = None,
    analyses: dict[str, Analysis] = ANALYSES,
) -> RunResult:
    """Fine-tune a pretrained classifier with ``plans`` (default: the config's plans or its strategy,
    ``two-phase``), run ``analyses`` on the kept model and write a run folder. A run that is interrupted
    can be continued with :func:`resume`."""
    config.validate()
    check_logger(config.logger)
    distributed.check(config.hardware)
    quiet_lightning()
    distributed.start(config.hardware)  # several processes: from here on, each one runs this
    given = [sources]
    report = Reporter(quiet or not distributed.is_zero())

    def create():  # rank 0 alone resolves the run (--lr auto), names, creates and fills the run folder
        sources = given[0] = start_sources(config, given[0])
        return create_folder(config, sources, plans, report)

    out, resolved = distributed.on_zero(create)
    run = RunFolder(out) if distributed.is_zero() else FollowerRun(out)
    sources = given[0]
    if sources is None:  # the other ranks read the split rank 0 wrote: the same split everywhere
        sources = thaw_data.discover(run.split_data(resolved.config))
    return finish(run, train(run, resolved, sources, report), analyses)


def start_sources(config: RunConfig, given) -> thaw_data.Sources:
    """The images of the run (the label budget applied), checked against the config before any folder
    exists."""
    sources = thaw_data.discover(config.data) if given is None else given
    preflight.check_multilabel(config, sources)  # settings with no multi-label meaning, refused here
    sources = apply_budget(sources, config.data, config.seed)
    adapt.check_unlabelled(config, sources)
    return sources


def create_folder(
    config: RunConfig, sources: thaw_data.Sources, plans: list[PhasePlan] | None, report: Reporter
) -> tuple[Path, Resolved]:
    """Name the run folder, resolve the run (``thaw.train.resolve``: the plans checked, ``--lr auto``
    found), create the folder and write its start files: ``config.yaml``, ``plans.yaml`` and
    ``lr_find.json`` (what was resolved), ``split.csv`` and the finders' files. Returns the folder and the
    :class:`Resolved` the engine runs."""
    out = Path(config.out) if config.out else default_out(sources.name, config.model.name)
    check_outside_data(out, config.data.path)
    with tempfile.TemporaryDirectory() as tmp:  # the finders' plots and curves, before the folder exists
        finders = (Path(tmp), report.say, report.warn, lr_find_plot)
        resolved = resolve(override(config, {"out": str(out)}), sources, plans, *finders)
        files = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
    run = RunFolder.create(out)
    for name, data in files.items():
        write_atomic(run / name, data)
    run.write_resolved(resolved)
    thaw_data.write_split(sources, run.split)
    return out, resolved


def resume(path: str | Path, quiet: bool = False, analyses: dict[str, Analysis] = ANALYSES) -> RunResult:
    """Continue an interrupted run: finished phases are not rerun, the interrupted one goes on from its
    last epoch with its optimizer, schedule, early-stopping and RNG state. The run's settings are read
    back as ``thaw fit`` resolved them (``config.yaml``, ``plans.yaml``, ``lr_find.json``)."""
    staged = RunFiles(staging_path(final_path(Path(path))))
    if staged.has(CONFIG):
        hardware = staged.config().validate().hardware
        distributed.check(hardware)
        quiet_lightning()
        distributed.start(hardware)
    run = distributed.on_zero(lambda: RunFolder.reopen(Path(path)))
    run = run if distributed.is_zero() else FollowerRun(run.final)
    resolved = run.resolved()
    sources = thaw_data.discover(run.split_data(resolved.config))
    report = Reporter(quiet or not distributed.is_zero())
    report.say(f"resuming {run.path}")
    return finish(run, train(run, resolved, sources, report), analyses)


def finish(run: RunFolder, t: Trained, analyses: dict[str, Analysis] = ANALYSES) -> RunResult:
    """After the engine: the analyses, each filling its field of the summary; then rank 0 writes the run
    folder and commits it."""
    findings = {name: analysis(t) for name, analysis in analyses.items()}
    summary = summarize(t, {name: f.value for name, f in findings.items()})
    if not distributed.is_zero():  # rank 0 writes the run folder
        return RunResult(run.final, summary, t.model)
    write_figures(run, t, summary, findings)
    with atomic_path(run.model) as tmp:
        save_model(t.model.eval(), tmp, summary.operating.to_dict() if summary.operating else None)
    summary = dataclasses.replace(summary, model_sha256=sha256(run.model))  # load checks it
    run.write_predictions(t.predictions)  # computed once: evaluate, the report and compare read them
    run.write_json(SUMMARY, summary.to_dict())
    write_report(run.path, warn=t.ctx.report.warn)  # report.html; a failure is a warning, not a lost run
    write_model_card(run.path, run.final.name)  # MODEL_CARD.md: what to hand over with the model
    config = t.ctx.config
    track_result(config.logger, run.path, {k: v for _, k, _, v in settings(config)}, final_metrics(summary))
    path = run.commit()
    t.ctx.report.finish(summary, path)
    return RunResult(path, summary, t.model)


def final_metrics(summary: RunSummary) -> dict[str, float]:
    """The run's figures for a tracker, flat, under ``result/`` (the epochs' series are ``phase1-val_loss``,
    ...): each plan's val/test scores (``result/phase2/test_accuracy``), the saved plan's
    (``result/saved/...``), each plan's gain over the one before (``result/gain/phase2/test_accuracy``)
    and the saved model at its operating point (``result/operating/test_sensitivity``); finite only."""
    keys = ("accuracy", "auc", "loss", "balanced_accuracy", "macro_f1", "sensitivity", "specificity", "ece")
    scored = dict(summary.phases) | {"saved": summary.final}
    if summary.operating is not None:
        scored["operating"] = summary.operating
    out = {}
    for name, r in scored.items():
        for split in ("val", "test"):
            m = getattr(r, split, None)
            out |= {f"result/{name}/{split}_{k}": getattr(m, k) for k in keys if m is not None}
    for name, by_split in summary.gain.items():
        out |= {f"result/gain/{name}/{s}_{k}": v for s, values in by_split.items() for k, v in values.items()}
    finite = {k: v for k, v in out.items() if isinstance(v, int | float) and math.isfinite(v)}
    return {k: float(v) for k, v in finite.items()}


def summarize(t: Trained, found: dict) -> RunSummary:
    """The run's :class:`RunSummary`: the engine's record and the analyses' fields (``found``)."""
    config, sources, loaders = t.ctx.config, t.sources, t.ctx.loaders
    return RunSummary(
        dataset=sources.name,
        model=config.model.name,
        classes=sources.class_names,
        images={s: len(d.images) for s, d in loaders.decoded.items()},
        phases=t.results,
        final_phase=t.final,
        strategy=strategy_name(config),
        seed=config.seed,
        gain=gains(t.results),
        budget=budget_record(sources, config.data, config.seed),
        adabn=t.adabn,
        pseudo_labels=t.pseudo,
        hardware=hardware_summary(config, loaders),
        lr_find=t.resolved.lr_find,
        augment=t.ctx.augment
        or {
            "setting": config.data.augment,
            "chosen": loaders.policy.describe(),
            "chosen_spec": loaders.policy.spec(),
            "skipped": "no plan fine-tunes the backbone",
        },
        task=MULTILABEL if sources.multilabel else SINGLE_LABEL,
        skipped_images=loaders.skipped,
        **found,
    )


def write_figures(run: RunFolder, t: Trained, summary: RunSummary, findings: dict[str, Finding]) -> None:
    """``metrics.csv``, the learning curves, the confusion matrix and each analysis's figure."""
    rows = [row for r in t.results.values() for row in r.epochs]
    write_rows_csv(rows, run / "metrics.csv")  # also when no phase trained epochs (a cached solve alone)
    write_atomic(run / "curves.png", learning_curves(rows, f"{summary.dataset} - {summary.model}"))
    split = final_split(t)
    if not t.sources.multilabel:  # multi-label: per-label counts in summary.json (per_label) instead
        matrix = summary.final.on(split).confusion
        write_atomic(run / "confusion.png", confusion(matrix, summary.classes, f"{t.final} on {split}"))
    for finding in findings.values():
        if finding.figure is not None:
            finding.figure(run.path)
