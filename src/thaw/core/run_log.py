"""What a run prints: the plan, one line per epoch, and what each phase gained over the one before.

Two formats: ``text`` (the default: lines for people, the rich result table) and ``json`` (one JSON object
per line on stdout for scripts, each with an ``event`` field and a UTC ``time``: ``run_start`` with the
config's digest, ``phase_start``, ``epoch`` with its metrics.csv row, ``augment_check``, ``gate``,
``phase_end``, ``message``, ``warning`` and ``result``; nothing else on stdout, no progress bar). Choose
one around a run with ``with log_format("json"): thaw.fit(config)``; ``--log-format`` does that.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from thaw.core.results import PhaseResult, RunSummary


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


LOG_FORMATS = ("text", "json")
_FORMAT: ContextVar[str] = ContextVar("thaw_log_format", default="text")


@contextmanager
def log_format(name: str) -> Iterator[None]:
    """Runs started inside report in ``name`` (one of :data:`LOG_FORMATS`)."""
    if name not in LOG_FORMATS:
        raise ValueError(f"log format {name!r}: choose from {', '.join(LOG_FORMATS)}")
    token = _FORMAT.set(name)
    try:
        yield
    finally:
        _FORMAT.reset(token)


def _finite(value):
    """JSON has no NaN or Infinity: null instead."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def in_notebook() -> bool:
    """Running in a Jupyter kernel (a notebook, JupyterLab, VS Code's notebooks, Colab): its stdout is
    no terminal, yet it shows a live progress bar (tqdm.auto draws a widget where ipywidgets is
    installed, else its text bar redraws in place)."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)() if ipython else None
    return type(shell).__name__ in ("ZMQInteractiveShell", "Shell")  # Jupyter's kernel; Colab's


def config_digest(config) -> str:
    """sha256 of the config as canonical JSON: two runs with the same digest had the same settings."""
    text = json.dumps(_finite(config.to_dict()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class Reporter:
    """Says what a run does; ``quiet``: only the result table (text) or the result event (json). In json
    mode ``quiet`` is always true for the caller (no progress bar), and :meth:`emit` writes the events."""

    def __init__(self, quiet: bool = False) -> None:
        self.json = _FORMAT.get() == "json"
        self.silent = quiet  # what the caller asked for
        self.quiet = quiet or self.json  # no human output on stdout
        self.console = Console(highlight=False)

    @property
    def progress(self) -> bool:
        """A live progress bar during training: in a terminal or a notebook. A pipe or a log file gets
        the one line per epoch alone (the bar's fragments would clutter it); json mode: never."""
        return not self.quiet and (sys.stdout.isatty() or in_notebook())

    def emit(self, event: str, **fields) -> None:
        """One JSON line on stdout (json mode): the event, its UTC time, its fields."""
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = json.dumps(_finite({"event": event, "time": stamp, **fields}), allow_nan=False)
        print(line, file=sys.stdout, flush=True)

    def say(self, text: str) -> None:
        if self.json and not self.silent:
            self.emit("message", text=text)
        elif not self.quiet:
            tqdm.write(text)

    def warn(self, text: str) -> None:
        if self.json:
            self.emit("warning", text=text)
        else:
            tqdm.write(f"warning: {text}", file=sys.stderr)

    def augment(self, record: dict, line: str) -> None:
        """The augmentation check: its record (augment.json) as an event, or its one line."""
        if self.json and not self.silent:
            self.emit("augment_check", **record)
        else:
            self.say(line)

    def start(self, config, sources, model, loaders, plans, hardware: tuple[str, int] | None = None) -> None:
        """``hardware``: the accelerator ``auto`` stands for and the process count (the engine asks torch)."""
        if self.json:
            if not self.silent:
                self.emit("run_start", **self._start_fields(config, sources, model, loaders, plans))
            return
        sizes = ", ".join(f"{s} {len(d.images)}" for s, d in loaders.decoded.items())
        pre = model.preprocessing
        classes = len(sources.class_names)
        kind = f"{classes} labels, multi-label" if sources.multilabel else f"{classes} classes"
        self.say(f"data: {sources.name} ({kind}; {sizes}; split {sources.split_origin})")
        self.say(
            f"model: {config.model.name} [{model.spec.source}] weights {config.model.weights}; "
            f"{len(model.layer_groups)} layer groups; {model.norm_kind}; input {pre.size}px "
            f"(resize {pre.resize_size}, {pre.interpolation})"
        )
        self.say(
            f"strategy: {config.strategy} ({', '.join(p.name for p in plans)}); run folder: {config.out}"
        )
        hw = getattr(config, "hardware", None)
        if hw is not None and hardware is not None:
            accelerator, processes = hardware
            extras = [
                name for name, on in (("compile", hw.compile), ("channels-last", hw.channels_last)) if on
            ]
            self.say(
                f"hardware: {accelerator} x {hw.devices} device(s) x {hw.num_nodes} node(s) "
                f"({processes} process(es), {hw.dist_strategy}); precision {hw.precision}"
                + "".join(f"; {e}" for e in extras)
                + f"; {config.data.num_workers} workers; images in {getattr(loaders, 'store', 'memory')}"
            )

    def _start_fields(self, config, sources, model, loaders, plans) -> dict:
        return {
            "config_digest": config_digest(config),
            "data": sources.name,
            "classes": list(sources.class_names),
            "multilabel": bool(sources.multilabel),
            "images": {s: len(d.images) for s, d in loaders.decoded.items()},
            "split": sources.split_origin,
            "model": config.model.name,
            "weights": config.model.weights,
            "input_size": model.preprocessing.size,
            "strategy": config.strategy,
            "plans": [p.name for p in plans],
            "seed": config.seed,
            "out": config.out,
        }

    def phase_start(self, plan, model, resumed: bool = False) -> None:
        if self.json:
            if not self.silent:
                groups = len(model.layer_groups)
                fields = {"description": plan.describe(groups), "epochs": plan.epochs, "resumed": resumed}
                self.emit("phase_start", phase=plan.name, **fields)
            return
        if plan.interpolate_from or plan.features == "cached" and plan.train == "head":
            alphas = f", alphas {', '.join(map(str, plan.alphas))}" if plan.interpolate_from else ""
            self.say(f"\n{plan.describe(len(model.layer_groups))}{alphas}")
            return
        again = " (resumed from its last checkpoint)" if resumed else ""
        self.say(
            f"\n{plan.describe(len(model.layer_groups))}; bn {plan.bn_policy}; at most {plan.epochs} epochs, "
            f"early stopping patience {plan.patience}{again}"
        )

    def epoch(self, row: dict) -> None:
        if self.json:
            if not self.silent:
                self.emit("epoch", **row)
            return
        self.say(
            f"  {row['phase']} epoch {row['epoch']:>3}: train loss {row.get('train_loss', float('nan')):.4f} "
            f"acc {_pct(row.get('train_acc'))} | val loss {row['val_loss']:.4f} acc {_pct(row['val_acc'])} "
            + (f"AUC {row['val_auc']:.3f} " if row.get("val_auc") is not None else "")
            + f"| {row['seconds']:.1f}s, {row['train_images_per_s']:.0f} img/s"
        )

    def phase_end(self, result: PhaseResult) -> None:
        if self.json:
            self._phase_end_events(result)
            return
        test = f", test acc {_pct(result.test.accuracy)}" if result.test is not None else ""
        kept = (
            f"alpha {result.alpha:g} of {len(result.curve)}"
            if result.alpha is not None
            else f"L2 {result.solver['l2']:g} of {len(result.curve)}, chosen on val loss"
            if result.solver
            else f"best epoch {result.best_epoch} of {result.epochs_run}"
        )
        self.say(f"{result.name}: {kept}: val acc {_pct(result.val.accuracy)}{test} ({result.seconds:.0f}s)")
        came = result.incoming
        if came and came.get("stopped"):
            shown = ", ".join(f"{k.removeprefix('val_')} {v:.4g}" for k, v in came["scores"].items())
            self.say(
                f"{result.name} did not beat the {came['plan']} weights it started from (val {shown}) within "
                f"its patience: stopped after {result.epochs_run} epochs; the run keeps the better plan"
            )
        if result.halted:
            self.warn(f"{result.name} was stopped early ({result.halted}): it kept its best weights before")

    def _phase_end_events(self, result: PhaseResult) -> None:
        if result.incoming and not self.silent:
            self.emit("gate", phase=result.name, **result.incoming)
        if result.halted:
            self.warn(f"{result.name} was stopped early ({result.halted}): it kept its best weights before")
        if self.silent:
            return
        self.emit(
            "phase_end",
            phase=result.name,
            best_epoch=result.best_epoch,
            epochs_run=result.epochs_run,
            stopped_early=result.stopped_early,
            alpha=result.alpha,
            solver=result.solver or None,
            val=_scores(result.val),
            test=_scores(result.test),
            seconds=result.seconds,
        )

    def finish(self, summary: RunSummary, path) -> None:
        """The result table, printed with --quiet too."""
        if self.json:
            self.emit("result", **result_fields(summary, path))
            return
        phases = list(summary.phases.values())
        table = Table(title=f"{summary.dataset} - {summary.model}")
        table.add_column("phase")
        splits = [s for s in ("val", "test") if any(r.on(s) is not None for r in phases)]
        for s in splits:
            for metric in ("acc", "AUC"):
                table.add_column(f"{s} {metric}", justify="right")
        table.add_column("best/ran", justify="right")
        table.add_column("s", justify="right")
        for r in phases:
            cells = [
                _pct(getattr(r.on(s), k)) if r.on(s) else "-" for s in splits for k in ("accuracy", "auc")
            ]
            label = r.name + ("*" if summary.final_phase == r.name else "")
            table.add_row(label, *cells, f"{r.best_epoch}/{r.epochs_run}", f"{r.seconds:.0f}")
            if r.name in summary.gain:
                g = summary.gain[r.name]
                cells = [
                    f"{100 * g[s][k]:+.1f}" if s in g else "-" for s in splits for k in ("accuracy", "auc")
                ]
                table.add_row("  gain", *cells, "", "")
        self.console.print()
        self.console.print(table)
        self.console.print("* the saved model; accuracy and AUC in %; gain = over the phase above, in points")
        if summary.task == "multilabel":
            self.console.print(
                "multi-label: AUC = the mean of the per-label AUCs, acc = label-wise accuracy (at 0.5 per "
                "plan; at the per-label thresholds below for the saved model)"
            )
        last = phases[-1].name
        if summary.final_phase != last:
            self.console.print(
                f"{last} did not raise validation accuracy above {summary.final_phase}: "
                f"the saved model keeps {summary.final_phase}'s weights"
            )
        if summary.operating is not None:
            for line in operating_lines(summary):
                self.console.print(line)
        confusion = "" if summary.task == "multilabel" else "confusion.png, "
        self.console.print(
            f"results: {path}/ (summary.json, metrics.csv, curves.png, {confusion}reliability.png, "
            f"model.safetensors)"
        )


def _scores(m) -> dict | None:
    return None if m is None else {"accuracy": m.accuracy, "auc": m.auc, "loss": m.loss, "n": m.n}


def result_fields(summary: RunSummary, path) -> dict:
    """The result table as data: each plan's val/test scores, epochs and seconds, its gain over the plan
    before, and which plan the saved model is."""
    phases = [
        {
            "phase": r.name,
            "val": _scores(r.val),
            "test": _scores(r.test),
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run,
            "seconds": r.seconds,
            "gain": summary.gain.get(r.name),
        }
        for r in summary.phases.values()
    ]
    operating = summary.operating.to_dict() if summary.operating is not None else None
    return {"path": str(path), "final_phase": summary.final_phase, "phases": phases, "operating": operating}


def operating_lines(summary: RunSummary) -> list[str]:
    """The saved model at its threshold: the metrics a clinical reader asks for, with 95% intervals."""
    op = summary.operating
    how = f"threshold {op.threshold:.3f} ({op.rule})" if op.threshold is not None else "argmax"
    if op.thresholds is not None:
        how = f"its per-label thresholds ({op.rule})"
    lines = [f"saved model at {how}{', with TTA' if op.tta else ''}:"]
    for split, m in (("val", op.val), ("test", op.test)):
        if m is None:
            continue
        parts = []
        names = [
            ("mean AUC" if m.per_label else "AUC", "auc", 1),
            ("acc", "accuracy", 100),
            ("exact match", "subset_accuracy", 100),
            ("bal. acc", "balanced_accuracy", 100),
            ("macro-F1", "macro_f1", 1),
            ("sens", "sensitivity", 100),
            ("spec", "specificity", 100),
        ]
        for label, key, scale in names:
            value = getattr(m, key)
            if value is None or value != value:  # NaN: multiclass sensitivity, a one-class split's AUC
                continue
            fmt = ".1f" if scale == 100 else ".3f"
            ci = m.ci.get(key)
            band = f" [{scale * ci[0]:{fmt}}-{scale * ci[1]:{fmt}}]" if ci else ""
            parts.append(f"{label} {scale * value:{fmt}}{band}")
        parts.append(f"ECE {m.ece:.3f}")
        lines.append(f"  {split}: " + ", ".join(parts))
    if op.test is not None and op.test.ci:
        lines.append("  [95% bootstrap intervals, 1000 resamples of the test images]")
    final = op.test or op.val
    if final.per_label:
        lines += per_label_lines(final, "test" if op.test is not None else "val")
    return lines


def per_label_lines(m, split: str) -> list[str]:
    """A multi-label model's table, one line per label: AUC, and the rest at the label's threshold."""
    width = max(len(name) for name in m.per_label)
    lines = [f"  per label on {split} (threshold chosen on val):"]
    for name, row in m.per_label.items():
        auc = "   -" if row["auc"] != row["auc"] else f"{row['auc']:.3f}"
        lines.append(
            f"    {name:<{width}}  AUC {auc}  threshold {row['threshold']:.3f}  "
            f"sens {_pct(row['sensitivity'])}  spec {_pct(row['specificity'])}  F1 {row['f1']:.3f}  "
            f"positives {row['positives']:.0f}"
        )
    return lines
