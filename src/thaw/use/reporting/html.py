"""``report.html``: one self-contained page per run folder (images embedded as base64 PNG, no external CSS,
script or font), built from the run folder alone: ``config.yaml``, ``plans.yaml``, ``split.csv``,
``metrics.csv``, ``summary.json`` and ``model.safetensors``, plus the images in the run's data for the
sections that need predictions (ROC, reliability, top losses); those say why when the data is gone.

``write_report(run)`` is called by the engine before a run folder is committed, and by ``thaw report RUN``.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thaw.core import yaml_file
from thaw.core.decoding import DECODE_ERRORS
from thaw.core.errors import ThawError
from thaw.core.files import write_atomic
from thaw.core.results import GAIN_METRICS, SUMMARY_VERSION, RunSummary
from thaw.core.run_folder import CONFIG, MODEL, PLANS, SPLIT, RunFiles
from thaw.data import discover
from thaw.data.decoded import open_image, resized
from thaw.use.predictor import Predictor
from thaw.use.reporting import figures
from thaw.version import __version__

REPORT = "report.html"
TOP_LOSSES = 12


def write_report(run: str | Path, warn=None) -> Path:
    """Build the report of the run folder ``run`` and write it to ``run/report.html`` (atomically).

    With ``warn`` (the engine's hook), a failure is reported through it and never fails the run."""
    run = Path(run)
    try:
        page = build_report(run)
    except Exception as err:  # the run's own results matter more than its report
        if warn is None:
            raise
        warn(f"report.html not written: {err}")
        return run / REPORT
    write_atomic(run / REPORT, page)
    return run / REPORT


def check_run(run: Path) -> dict:
    """The raw ``summary.json`` of a finished run of this thaw's layout; a clear :class:`ThawError` else."""
    if not run.is_dir():
        raise ThawError(f"{run} is not a folder; give a run folder made by `thaw fit`")
    files = RunFiles(run)
    summary = files.summary
    if not summary.is_file():
        if files.has(CONFIG) and files.has(PLANS):
            raise ThawError(
                f"{run} is an incomplete run (no summary.json yet): finish it with `thaw resume {run}`"
            )
        raise ThawError(f"{run} is not a thaw run folder (no summary.json); give a folder made by `thaw fit`")
    try:
        raw = json.loads(summary.read_text())
    except json.JSONDecodeError as err:
        raise ThawError(f"{summary} is not valid JSON ({err})") from err
    version = raw.get("version", 1) if "phases" in raw else 1
    if version < SUMMARY_VERSION:
        raise ThawError(
            f"{run} was made by an older thaw (summary version {version}, this one reads {SUMMARY_VERSION}); "
            f"rerun it with `thaw fit --config {run / CONFIG}` to get a report"
        )
    if version > SUMMARY_VERSION:
        raise ThawError(
            f"{run} was made by a newer thaw (summary version {version}); upgrade thaw to report on it"
        )
    for name in (CONFIG, "metrics.csv"):
        if not files.has(name):
            raise ThawError(f"{run} has no {name}: it is not a complete run folder")
    return raw


def build_report(run: Path) -> str:
    raw = check_run(run)
    summary = RunSummary.from_dict(raw)
    files = RunFiles(run)
    config = files.config()
    rows = _metrics_rows(run / "metrics.csv")
    plans = yaml_file.load_file(run / PLANS) if files.has(PLANS) else []
    split_rows = _split_rows(files.split)
    predictions = Predictions.of(files, config, summary)

    title = f"{summary.dataset} - {summary.model}"
    page = Page(title)
    name = run.name.removesuffix(".incomplete")  # the engine reports before the run folder is renamed
    page.text(
        f"<p class=meta>{_e(name)} &middot; strategy <b>{_e(summary.strategy)}</b> "
        f"({_e(', '.join(summary.phases))}) &middot; seed {summary.seed} &middot; made "
        f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(files.summary.stat().st_mtime))} "
        f"&middot; report by thaw {_e(__version__)}</p>"
    )
    _decision(page, summary)
    if summary.auto:
        _auto(page, summary.auto)
    _configuration(page, config, plans)
    _data(page, summary, split_rows, predictions)
    _augmentation(page, summary)
    _training(page, summary, rows, title, run)
    _results(page, summary)
    _evaluation(page, summary, predictions, run)
    _top_losses(page, run, summary, predictions)
    _forgetting(page, run, raw)
    return page.render()


# ----------------------------------------------------------------------------------------- sections


def _decision(page: Page, summary: RunSummary) -> None:
    page.section("decision", "Decision")
    accs = ", ".join(
        f"{_e(n)} {_pct(p.val.accuracy)}" + (" (kept)" if n == summary.final_phase else "")
        for n, p in summary.phases.items()
    )
    names = list(summary.phases)
    later = names[names.index(summary.final_phase) + 1 :]
    why = (
        f"The saved model is <b>{_e(summary.final_phase)}</b>'s weights: the best validation accuracy "
        f"of the plans (the later plan on a tie). Validation accuracy: {accs}."
    )
    if later:
        why += (
            f" The later plan(s) {_e(', '.join(later))} did not raise validation accuracy, so their "
            f"weights were not kept."
        )
    for result in summary.phases.values():
        came = result.incoming
        if came and came.get("stopped"):
            shown = ", ".join(f"{_e(k)} {v:.4g}" for k, v in came["scores"].items())
            why += (
                f" {_e(result.name)} stopped after {result.epochs_run} epochs: it did not beat the "
                f"{_e(came['plan'])} weights it started from ({shown}) within its patience."
            )
    final = summary.final
    split = "test" if final.test is not None else "val"
    m = final.on(split)
    page.text(f"<p>{why}</p>")
    if summary.task == "multilabel":
        page.text(
            f"<p class=headline>{_e(split)} mean AUC <b>{_num(m.auc)}</b> over {len(summary.classes)} labels "
            f"&middot; label-wise accuracy {_pct(m.accuracy)} &middot; exact match "
            f"{_pct(m.subset_accuracy)} &middot; macro-F1 {m.macro_f1:.3f} &middot; {m.n} images "
            f"(multi-label; accuracies at 0.5 per label here, at the chosen thresholds below)</p>"
        )
        return
    page.text(
        f"<p class=headline>{_e(split)} accuracy <b>{_pct(m.accuracy)}</b> &middot; balanced "
        f"{_pct(m.balanced_accuracy)} &middot; macro-F1 {m.macro_f1:.3f} &middot; AUC {_num(m.auc)} "
        f"&middot; {m.n} images</p>"
    )


def _auto(page: Page, auto: dict) -> None:
    """``--strategy auto``: the screening table, and why the winner won (``thaw.studies.auto``)."""
    page.section("auto", "Strategy search (--strategy auto)")
    page.text(
        f"<p class=headline>{_e(auto['reason'].removeprefix('auto: '))}</p>"
        f"<p>{_e(auto['time_used_s'])} s used of a {_e(auto['budget_s'])} s budget "
        f"({_e(auto['budget_rule'])})"
        + (f"; {_e(auto['stopped'])}" if auto.get("stopped") else "")
        + f". How: {_e(auto['method'])}.</p>"
    )
    metric = auto["metric"].replace("_", " ")
    value = _num if auto["metric"] in ("auc", "macro_f1") else _pct
    cols = ["candidate", "overrides", "rung", "phase-2 epochs", f"val {metric}", "val loss", "val AUC"]
    rows = [
        [
            _e(r["candidate"]),
            _e(", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"),
            _e(r["rung"]),
            _e(r["phase2_epochs"]) if r["path"] else "-",
            value(r["val_metric"]),
            _num(r["val_loss"]),
            _num(r["val_auc"]),
            "-" if r["seconds"] is None else f"{r['seconds']:.0f}",
            f"<b>{_e(r['status'])}</b>" if r["status"] == "winner" else _e(r["status"]),
            _e(r["why"]),
        ]
        for r in auto["table"]
    ]
    page.table([*cols, "seconds", "status", "why"], rows, caption="the screening runs (folders under auto/)")


def _augmentation(page: Page, summary: RunSummary) -> None:
    """What phase 2 trained with and, with ``--augment auto``, what the check measured."""
    record = summary.augment
    if not record:
        return
    page.section("augmentation", "Augmentation")
    if "ops" not in record:
        why = f" Not checked: {_e(record['skipped'])}." if record.get("skipped") else ""
        used = f"--augment {_e(record['setting'])}: training used <b>{_e(record['chosen'])}</b>."
        page.text(f"<p>{used}{why}</p>")
        return
    page.text(
        f"<p>--augment auto started from <b>{_e(record['started_from'])}</b> and trained with "
        f"<b>{_e(record['chosen'])}</b>. The solved head scored {record['views']} views, with each op "
        f"alone, of {record['images']} training images: right on {_pct(record['eval_accuracy'])} of them "
        f"on the eval view (chance {_pct(record['chance'])}). An op that costs more than "
        f"{100 * record['max_cost']:.0f}% of the head's skill above chance hides the label on this data, "
        f"and is weakened or dropped.</p>"
    )
    rows = [
        [
            _e(op),
            _pct(e["accuracy"]),
            f"{100 * e['cost']:.0f}%",
            _e(", ".join(f"area >= {a}: {100 * c:.0f}%" for a, c in e.get("cost_by_min_area", {}).items())),
            _e(e["decision"]),
        ]
        for op, e in record["ops"].items()
    ]
    page.table(["op", "accuracy", "cost", "weaker crops", "decision"], rows)


def _configuration(page: Page, config, plans: list[dict]) -> None:
    page.section("configuration", "Configuration")
    if plans:
        cols = [
            "name",
            "train",
            "lr",
            "lr_ratio",
            "head_at",
            "layer_decay",
            "epochs",
            "patience",
            "warmup_epochs",
            "schedule",
            "bn_policy",
            "regularizer",
            "interpolate_from",
        ]
        page.table(cols, [[_e(str(p.get(c, ""))) for c in cols] for p in plans], caption="phase plans")
    page.text(f"<details><summary>config.yaml</summary><pre>{_e(config.to_yaml())}</pre></details>")


def _data(page: Page, summary: RunSummary, split_rows: list[dict], predictions: Predictions) -> None:
    page.section("data", "Data")
    splits = [s for s in ("train", "val", "test") if any(r["split"] == s for r in split_rows)]
    if summary.task == "multilabel":  # split.csv's class: the labels present, joined by ;
        counts = Counter((c, r["split"]) for r in split_rows for c in r["class"].split(";") if c)
    else:
        counts = Counter((r["class"], r["split"]) for r in split_rows)
    body = [[_e(c), *[str(counts[(c, s)]) for s in splits]] for c in summary.classes]
    listed = Counter(r["split"] for r in split_rows)
    body.append(["<b>listed in split.csv</b>", *[f"<b>{listed[s]}</b>" for s in splits]])
    body.append(["<b>decoded, used</b>", *[str(summary.images.get(s, 0)) for s in splits]])
    what = (
        f"{len(summary.classes)} labels (multi-label); positive images per split"
        if summary.task == "multilabel"
        else f"{len(summary.classes)} classes; images per split"
    )
    page.table(["label" if summary.task == "multilabel" else "class", *splits], body, caption=what)
    failed = {s: listed[s] - summary.images.get(s, 0) for s in splits if listed[s] > summary.images.get(s, 0)}
    if failed:
        text = ", ".join(f"{s}: {n}" for s, n in failed.items())
        names = predictions.failed if predictions.ok else []
        page.text(
            f"<p class=warn>Failed images (undecodable, skipped): {_e(text)}."
            + (f" In the {predictions.split} split: {_e(', '.join(names[:20]))}" if names else "")
            + "</p>"
        )
    else:
        page.text("<p>Failed images: none; every image in split.csv was decoded.</p>")


def _drawn(run: Path, name: str, draw) -> bytes:
    """The figure the run folder already holds as ``name`` (``thaw fit`` draws curves.png and confusion.png
    with the same functions and arguments), else drawn now."""
    path = run / name
    return path.read_bytes() if path.is_file() else draw()


def _training(page: Page, summary: RunSummary, rows: list[dict], title: str, run: Path) -> None:
    page.section("training", "Training")
    if not rows:
        page.text("<p>No epochs were trained (metrics.csv is empty).</p>")
        return
    page.figure(
        _drawn(run, "curves.png", lambda: figures.learning_curves(rows, title)),
        "learning curves",
        "Loss and accuracy per epoch over every plan; a dashed line marks where each plan starts.",
    )
    page.figure(
        figures.group_lrs(rows, summary.phases),
        "learning rates per layer group",
        "LR of the head and of each backbone layer group (0 = input side) at each epoch's start; "
        "a frozen group has no line, and groups at the same LR draw over each other.",
    )
    for name, p in summary.phases.items():
        if p.solver:
            page.figure(
                figures.solver_curve(p.curve, p.solver["l2"], f"{name}: head solved on cached features"),
                f"{name} L2 path",
                "The head is solved to convergence for each L2 strength (strongest first); the strongest "
                "whose validation loss is within 2% of the lowest is kept.",
            )
        elif p.curve:
            page.figure(
                figures.interpolation_curve(p.curve, p.alpha, f"{name}: validation accuracy per alpha"),
                f"{name} interpolation curve",
                "The weight-interpolation step scores every alpha on validation and keeps the best.",
            )


def _results(page: Page, summary: RunSummary) -> None:
    page.section("results", "Results per phase and gains")
    cols = [
        "plan",
        "trainable",
        "best epoch",
        "epochs",
        "seconds",
        "val acc",
        "val AUC",
        "test acc",
        "test balanced",
        "test macro-F1",
        "test AUC",
    ]
    body = []
    for name, p in summary.phases.items():
        t = p.test
        body.append(
            [
                _e(name) + (" <b>(kept)</b>" if name == summary.final_phase else ""),
                _e(p.trainable_groups),
                str(p.best_epoch),
                str(p.epochs_run) + (" (stopped early)" if p.stopped_early else ""),
                f"{p.seconds:g}",
                _pct(p.val.accuracy),
                _num(p.val.auc),
                *(
                    [_pct(t.accuracy), _pct(t.balanced_accuracy), _num(t.macro_f1), _num(t.auc)]
                    if t
                    else ["-"] * 4
                ),
            ]
        )
    page.table(cols, body, caption="each plan measured on its best epoch's weights")
    if summary.gain:
        cols = ["plan (over the one before)", "split", *GAIN_METRICS]
        body = []
        for plan, per_split in summary.gain.items():
            for split, metrics in per_split.items():
                body.append([_e(plan), split, *[_signed(metrics.get(k)) for k in GAIN_METRICS]])
        page.table(cols, body, caption="gain: each plan over the plan before it (points; AUC and F1 x100)")


def _evaluation(page: Page, summary: RunSummary, predictions: Predictions, run: Path) -> None:
    page.section("evaluation", "The saved model")
    final = summary.final
    split = "test" if final.test is not None else "val"
    if summary.task == "multilabel":
        _per_label(page, summary, predictions)
        return
    page.figure(
        _drawn(
            run,
            "confusion.png",
            lambda: figures.confusion(
                final.on(split).confusion, summary.classes, f"{summary.final_phase} on {split}"
            ),
        ),
        "confusion matrix",
        f"Confusion matrix of the saved model on the {split} split (rows: true class).",
    )
    if not predictions.ok:
        page.text(f"<p class=warn>ROC and reliability diagram left out: {_e(predictions.reason)}</p>")
        return
    what = "ROC curve" if len(summary.classes) == 2 else "per-class ROC (one-vs-rest)"
    page.figure(
        figures.roc(predictions.probs, predictions.labels, summary.classes, f"{what}, {predictions.split}"),
        "ROC",
        f"{what} of the saved model on the {predictions.split} split"
        + (f" (positive class: {_e(summary.classes[1])})." if len(summary.classes) == 2 else "."),
    )
    _, ece = figures.calibration(predictions.probs, predictions.labels)
    title = f"{summary.final_phase} on {predictions.split}"
    draw = lambda: figures.reliability(predictions.probs, predictions.labels, title)  # noqa: E731
    page.figure(
        _drawn(run, "reliability.png", draw) if predictions.from_run else draw(),
        "reliability diagram",
        f"Reliability: accuracy per confidence bin (counts at the bottom); expected calibration error "
        f"{ece:.3f}.",
    )


def _per_label(page: Page, summary: RunSummary, predictions: Predictions) -> None:
    """A multi-label model: each label's AUC and its figures at the threshold chosen on validation."""
    op = summary.operating
    m = (op.test or op.val) if op is not None else summary.final.test or summary.final.val
    split = "test" if op is not None and op.test is not None else "val"
    body = [
        [
            _e(name),
            _num(row["auc"]),
            f"{row['threshold']:.3f}",
            _pct(row["sensitivity"]),
            _pct(row["specificity"]),
            _num(row["f1"]),
            f"{row['positives']:.0f}",
        ]
        for name, row in m.per_label.items()
    ]
    page.table(
        ["label", "AUC", "threshold", "sensitivity", "specificity", "F1", "positives"],
        body,
        caption=f"the saved model on the {split} split, per label "
        f"({op.rule if op else 'thresholds 0.5'}); mean AUC {_num(m.auc)}, label-wise accuracy "
        f"{_pct(m.accuracy)}, exact match {_pct(m.subset_accuracy)}",
    )
    if not predictions.ok:
        page.text(f"<p class=warn>ROC curves left out: {_e(predictions.reason)}</p>")
        return
    page.figure(
        figures.roc(
            predictions.probs, predictions.labels, summary.classes, f"per-label ROC, {predictions.split}"
        ),
        "ROC",
        f"One ROC per label of the saved model on the {predictions.split} split.",
    )


def _top_losses(page: Page, run: Path, summary: RunSummary, predictions: Predictions) -> None:
    page.section("top-losses", "Top losses")
    if summary.task == "multilabel":
        page.text("<p>Left out: a multi-label image has no single true class to rank losses by.</p>")
        return
    if not predictions.ok:
        page.text(f"<p class=warn>Left out: {_e(predictions.reason)}</p>")
        return
    p_true = predictions.probs[np.arange(len(predictions.labels)), predictions.labels]
    losses = -np.log(np.clip(p_true, 1e-12, None))
    order = np.argsort(-losses, kind="stable")[:TOP_LOSSES]
    maps, note = predictions.cams(order)
    page.text(
        f"<p>The {len(order)} {predictions.split} images with the highest loss (-log p(true class)). "
        f"{_e(note)}</p>"
    )
    tiles = []
    for rank, i in enumerate(order):
        pred = int(predictions.probs[i].argmax())
        label = int(predictions.labels[i])
        pixels = predictions.crops[i] if maps is None else maps[rank]
        ok = "ok" if pred == label else "wrong"
        tiles.append(
            f"<figure class='tile {ok}'>{_img(figures.image_png(pixels), predictions.keys[i])}"
            f"<figcaption><b>true {_e(summary.classes[label])}</b>, predicted "
            f"{_e(summary.classes[pred])} ({_pct(predictions.probs[i, pred])}); p(true) "
            f"{_pct(p_true[i])}, loss {losses[i]:.2f}<br>"
            f"<span class=path>{_e(Path(predictions.keys[i]).name)}</span></figcaption></figure>"
        )
    page.text(f"<div class=tiles>{''.join(tiles)}</div>")


def _forgetting(page: Page, run: Path, raw: dict) -> None:
    page.section("forgetting", "Forgetting diagnostics")
    found = {}
    if isinstance(raw.get("forgetting"), dict):
        found["summary.json"] = raw["forgetting"]
    for name, phase in raw.get("phases", {}).items():
        if isinstance(phase, dict) and isinstance(phase.get("forgetting"), dict):
            found[name] = phase["forgetting"]
    if (run / "forgetting.json").is_file():
        found["forgetting.json"] = json.loads((run / "forgetting.json").read_text())
    if not found:
        page.text(
            "<p>This run has no forgetting diagnostics (no <code>forgetting</code> entry in "
            "summary.json and no forgetting.json).</p>"
        )
        return
    for where, data in found.items():
        flat = _flatten(data)
        page.table(["measure", "value"], [[_e(k), _e(_show(v))] for k, v in flat], caption=where)
    if (run / "drift.png").is_file():
        page.figure((run / "drift.png").read_bytes(), "weight drift per layer group", "weight drift per plan")


# ----------------------------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """The saved model's probabilities on the run's test split (else val), recomputed from its images."""

    ok: bool
    reason: str = ""
    split: str = ""
    keys: list[str] | None = None
    probs: np.ndarray | None = None
    labels: np.ndarray | None = None
    crops: list[np.ndarray] | None = None  # what the model saw: uint8 HWC after resize and center crop
    failed: list[str] | None = None
    predictor: object = None
    inputs: object = None
    from_run: bool = False  # probs are the run's own (predictions.npz), from which it drew reliability.png

    @classmethod
    def of(cls, run: RunFiles, config, summary: RunSummary) -> Predictions:
        if not run.model.is_file():
            return cls(False, f"the run folder has no {MODEL}")
        if not run.split.is_file():
            return cls(False, f"the run folder has no {SPLIT}")
        try:
            sources = discover(run.split_data(config))
        except ThawError as err:
            return cls(False, f"the run's data is not available here ({err})")
        return cls._predict(run, sources, summary)

    @classmethod
    def _predict(cls, run: RunFiles, sources, summary: RunSummary) -> Predictions:
        import torch
        from torchvision.transforms.v2 import functional as F

        predictor = Predictor.load(run.model)
        if predictor.class_names != summary.classes:
            return cls(False, "model.safetensors' classes differ from summary.json's")
        split = "test" if sources.split("test") and summary.final.test is not None else "val"
        pre, channels = predictor.preprocessing, predictor.model.spec.in_channels
        keys, labels, crops, inputs, failed = [], [], [], [], []
        mean = torch.tensor(pre.mean).view(-1, 1, 1)
        std = torch.tensor(pre.std).view(-1, 1, 1)
        for item in sources.split(split):
            try:
                image = open_image(item, channels, None, pre.resize_size)
                crop = F.center_crop(resized(image, pre), [pre.size, pre.size])
            except DECODE_ERRORS:
                failed.append(item.key)
                continue
            keys.append(item.key)
            labels.append(item.label)
            inputs.append((crop.float() / 255 - mean) / std)
            pixels = crop.permute(1, 2, 0).numpy()
            crops.append(np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels)
        if not keys:
            return cls(False, f"none of the {split} split's images could be read", failed=failed)
        batch = torch.stack(inputs)
        stored = run.read_predictions().get(split)
        from_run = stored is not None and not stored.tta and stored.keys == keys
        if from_run:
            probs = stored.probs  # the center crop's, computed once at the end of the run
        else:
            model = predictor.model
            with torch.no_grad():
                probs = torch.cat(
                    [model.probabilities(model(batch[i : i + 64])) for i in range(0, len(batch), 64)]
                ).numpy()
        return cls(True, "", split, keys, probs, np.array(labels), crops, failed, predictor, batch, from_run)

    def cams(self, indices: np.ndarray) -> tuple[list[np.ndarray] | None, str]:
        """Grad-CAM overlays of the predicted class for ``indices``, or None and the reason why not."""
        try:
            from thaw.use.reporting.cam import find_target, grad_cam, overlay  # pytorch-grad-cam is optional
        except ImportError as err:
            return None, (
                f"No class-activation maps: {err.name} is not installed "
                "(pip install 'thaw-transfer[report]')."
            )
        model = self.predictor.model
        images = self.inputs[list(indices)]
        target = find_target(model, images[0])
        if target is None:
            return None, (
                "No class-activation maps: no layer of this backbone gives a spatial map larger than 1x1 "
                "at this input size."
            )
        classes = [int(self.probs[i].argmax()) for i in indices]
        heat = grad_cam(model, images, classes, target)
        maps = [overlay(self.crops[i], h) for i, h in zip(indices, heat)]
        layer = f"layer group {target.group} ({target.name or 'backbone'})"
        return maps, f"Overlay: Grad-CAM of the predicted class at {layer}, red = most evidence."


# ----------------------------------------------------------------------------------------- HTML


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:1.5em;margin:.4em 0}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-top:.6em}
nav{display:flex;flex-wrap:wrap;gap:.2em .9em;font-size:.9em}
.meta{color:#555;font-size:.9em}.headline{font-size:1.1em}.warn{color:#8a4b00}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85em;margin:.5em 0;background:#fff}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}caption{text-align:left;color:#555;padding:2px 0}
figure{margin:.8em 0}figure img{max-width:100%;height:auto;background:#fff}
figcaption{font-size:.85em;color:#444}pre{background:#fff;border:1px solid #ddd;padding:8px;overflow-x:auto}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.tile{margin:0;background:#fff;border:2px solid #ddd;padding:4px}.tile.wrong{border-color:#d33}
.tile img{width:100%;image-rendering:pixelated}.path{color:#777;word-break:break-all}
"""


# The page's only script: a self-check a browser test can read from the DOM (images that failed to decode,
# the page's width against the viewport's); it changes nothing a reader sees.
CHECK = """
addEventListener("load",()=>{const b=[...document.images].filter(i=>!i.complete||!i.naturalWidth);
document.body.dataset.images=document.images.length;document.body.dataset.brokenImages=b.length;
document.body.dataset.scrollWidth=document.documentElement.scrollWidth;
document.body.dataset.viewportWidth=innerWidth;
if(b.length)console.error("broken images: "+b.map(i=>i.alt).join(", "));});
"""


class Page:
    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []
        self.sections: list[tuple[str, str]] = []

    def section(self, anchor: str, title: str) -> None:
        if self.sections:
            self.parts.append("</section>")
        self.sections.append((anchor, title))
        self.parts.append(f"<section id={anchor}><h2>{_e(title)}</h2>")

    def text(self, markup: str) -> None:
        self.parts.append(markup)

    def table(self, columns: list[str], rows: list[list[str]], caption: str = "") -> None:
        head = "".join(f"<th>{_e(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
        cap = f"<caption>{_e(caption)}</caption>" if caption else ""
        self.parts.append(f"<div class=scroll><table>{cap}<tr>{head}</tr>{body}</table></div>")

    def figure(self, image: bytes, alt: str, caption: str) -> None:
        self.parts.append(f"<figure>{_img(image, alt)}<figcaption>{caption}</figcaption></figure>")

    def render(self) -> str:
        nav = "".join(f"<a href='#{a}'>{_e(t)}</a>" for a, t in self.sections)
        body = "".join(self.parts) + ("</section>" if self.sections else "")
        return (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>thaw report: {_e(self.title)}</title><style>{CSS}</style></head>"
            f"<body><main><h1>thaw report: {_e(self.title)}</h1><nav>{nav}</nav>{body}</main>"
            f"<script>{CHECK}</script></body></html>\n"
        )


def _img(image: bytes, alt: str) -> str:
    data = base64.b64encode(image).decode("ascii")
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"


# ----------------------------------------------------------------------------------------- helpers


def _metrics_rows(path: Path) -> list[dict]:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for k, v in r.items():
            if k != "phase":
                try:
                    r[k] = float(v) if v not in ("", None) else None
                except ValueError:
                    pass
    return rows


def _split_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _flatten(data, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(data, dict):
        out = []
        for k, v in data.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, data)]


def _show(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, list | dict) else str(v)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _pct(x) -> str:
    return "-" if x is None or x != x else f"{100 * float(x):.1f}%"


def _num(x) -> str:
    return "-" if x is None or x != x else f"{float(x):.3f}"


def _signed(x) -> str:
    return "-" if x is None or x != x else f"{100 * float(x):+.1f}"
