"""A run, composed: check the config and name the run folder, find ``--lr auto``, run the plans
(``thaw.train.engine``), run the analyses after training (``thaw.use.analyses``), and write the folder:
``summary.json``, ``metrics.csv``, the figures, the model and ``report.html``. ``thaw.fit`` and
``thaw.resume`` are these :func:`fit` and :func:`resume`."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from thaw import data as thaw_data
from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_atomic, write_rows_csv
from thaw.core.results import MULTILABEL, SINGLE_LABEL, RunSummary, gains
from thaw.core.run_folder import FollowerRun, RunFolder, check_outside_data, default_out, final_path
from thaw.core.run_log import Reporter
from thaw.core.strategies import PhasePlan, check_plans, plans_for, strategy_name
from thaw.data.budget import apply_budget, budget_record
from thaw.models import Classifier, save_model
from thaw.models.state_dict import sha256
from thaw.train import adapt, distributed, lr_find, preflight
from thaw.train.engine import Trained, train
from thaw.train.loggers import check_logger
from thaw.train.recipe import hardware_summary, quiet_lightning
from thaw.use.analyses import ANALYSES, Analysis, Finding, final_split
from thaw.use.reporting.figures import lr_find_plot
from thaw.use.reporting.html import write_report
from thaw.use.reporting.plots import plot_confusion, plot_curves


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
    if config.auto and plans is not None:
        raise ThawError("lr or lr_ratio auto is found for the config's strategy: give plans with numbers")
    plans = check_plans(list(plans)) if plans is not None else plans_for(lr_find.placeholder(config))
    lr_find.check_auto(config, plans)
    given = [sources]
    report = Reporter(quiet or not distributed.is_zero())

    def create():  # rank 0 alone finds --lr auto, names, creates and fills the run folder
        sources = given[0] = start_sources(config, given[0], plans)
        return create_folder(config, sources, plans, report)

    out, config, plans = distributed.on_zero(create)
    run = RunFolder(out) if distributed.is_zero() else FollowerRun(out)
    sources = given[0]
    if sources is None:  # the other ranks read the split rank 0 wrote: the same split everywhere
        sources = thaw_data.discover(override(config, {"data.split_file": str(run / "split.csv")}).data)
    return finish(run, train(run, config, plans, sources, report), analyses)


def start_sources(config: RunConfig, given, plans: list[PhasePlan]) -> thaw_data.Sources:
    """The images of the run (the label budget applied), checked against the config and the plans
    before any folder exists."""
    sources = thaw_data.discover(config.data) if given is None else given
    preflight.check_multilabel(config, sources)  # settings with no multi-label meaning, refused here
    sources = apply_budget(sources, config.data, config.seed)
    adapt.check_unlabelled(config, sources)
    preflight.check_run(config, plans, sources.class_names, sources.multilabel)  # before any folder
    return sources


def create_folder(
    config: RunConfig, sources: thaw_data.Sources, plans: list[PhasePlan], report: Reporter
) -> tuple[Path, RunConfig, list[PhasePlan]]:
    """Name and create the run folder and write its start files: ``config.yaml`` (with what ``--lr auto``
    found, recorded once), ``plans.yaml``, ``split.csv`` and the finders' files. Returns the folder, the
    config as recorded, and the plans to run (built from the numbers found)."""
    out = Path(config.out) if config.out else default_out(sources.name, config.model.name)
    check_outside_data(out, config.data.path)
    # the numbers an earlier --lr auto run recorded are found afresh (or dropped: a rerun with numbers)
    cfg = override(config, {"out": str(out), "lr_found": None, "lr_ratio_found": None}, keep_none=True)
    records, files = {}, {}
    if cfg.auto:  # --lr auto: thaw lr-find first; config.yaml records auto and the value found
        with tempfile.TemporaryDirectory() as tmp:
            finders = (Path(tmp), report.say, report.warn, lr_find_plot)
            found, records = lr_find.resolve_auto(cfg, sources, *finders)
            files = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
        cfg = override(cfg, {f"{key}_found": value for key, value in found.items()})
        plans = plans_for(cfg.resolved())
    run = RunFolder.create(out)
    for name, data in files.items():  # the finders' plots and curves
        write_atomic(run / name, data)
    if records:
        run.write_json("lr_find.json", records)
    run.write_text("config.yaml", cfg.to_yaml())
    run.write_text("plans.yaml", yaml.safe_dump([p.to_dict() for p in plans], sort_keys=False))
    thaw_data.write_split(sources, run / "split.csv")
    return out, cfg, plans


def resume(path: str | Path, quiet: bool = False, analyses: dict[str, Analysis] = ANALYSES) -> RunResult:
    """Continue an interrupted run: finished phases are not rerun, the interrupted one goes on from its
    last epoch with its optimizer, schedule, early-stopping and RNG state."""
    staged = RunFolder(final_path(Path(path))).path
    config = RunConfig.from_yaml(staged / "config.yaml").validate() if staged.is_dir() else None
    if config is not None:
        distributed.check(config.hardware)
        quiet_lightning()
        distributed.start(config.hardware)
    run = distributed.on_zero(lambda: RunFolder.reopen(Path(path)))
    run = run if distributed.is_zero() else FollowerRun(run.final)
    config = RunConfig.from_yaml(run / "config.yaml").validate().resolved()
    plans = check_plans([PhasePlan.from_dict(p) for p in yaml.safe_load((run / "plans.yaml").read_text())])
    sources = thaw_data.discover(override(config, {"data.split_file": str(run / "split.csv")}).data)
    report = Reporter(quiet or not distributed.is_zero())
    report.say(f"resuming {run.path}")
    return finish(run, train(run, config, plans, sources, report), analyses)


def finish(run: RunFolder, t: Trained, analyses: dict[str, Analysis] = ANALYSES) -> RunResult:
    """After the engine: the analyses, each filling its field of the summary; then rank 0 writes the run
    folder and commits it."""
    findings = {name: analysis(t) for name, analysis in analyses.items()}
    summary = summarize(t, {name: f.value for name, f in findings.items()})
    if not distributed.is_zero():  # rank 0 writes the run folder
        return RunResult(run.final, summary, t.model)
    write_figures(run, t, summary, findings)
    with atomic_path(run / "model.safetensors") as tmp:
        save_model(t.model.eval(), tmp)
    summary = dataclasses.replace(summary, model_sha256=sha256(run / "model.safetensors"))  # load checks it
    run.write_json("summary.json", summary.to_dict())
    write_report(run.path, warn=t.ctx.report.warn)  # report.html; a failure is a warning, not a lost run
    path = run.commit()
    t.ctx.report.finish(summary, path)
    return RunResult(path, summary, t.model)


def summarize(t: Trained, found: dict) -> RunSummary:
    """The run's :class:`RunSummary`: the engine's record and the analyses' fields (``found``)."""
    config, sources, loaders, run = t.ctx.config, t.sources, t.ctx.loaders, t.ctx.run
    lr_found = run / "lr_find.json"
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
        lr_find=json.loads(lr_found.read_text()) if lr_found.is_file() else {},
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
    plot_curves(rows, run / "curves.png", f"{summary.dataset} - {summary.model}")
    split = final_split(t)
    if not t.sources.multilabel:  # multi-label: per-label counts in summary.json (per_label) instead
        confusion = summary.final.on(split).confusion
        plot_confusion(confusion, summary.classes, run / "confusion.png", f"{t.final} on {split}")
    for finding in findings.values():
        if finding.figure is not None:
            finding.figure(run.path)
