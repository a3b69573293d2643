"""What the command line prints: rich tables on a terminal (no wrapping when piped), CSV and JSON lines
for scripts, and the one-paragraph summaries of an evaluation, a demo and a cross-validation. Each function
takes the library's results and prints or returns text; nothing here computes a number."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from thaw.core.results import Metrics, RunSummary
from thaw.core.run_log import per_label_lines
from thaw.metrics.stats import interval


def show(table: Table) -> None:
    """``table`` on stdout: as wide as the terminal, or 160 columns when piped (no wrapping)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)


def mean_sd(values: Sequence[float]) -> str:
    """``mean +- sd`` of fractions, in percent (:func:`thaw.metrics.stats.interval`)."""
    i = interval(values)
    return f"{100 * i.mean:.1f} +- {100 * i.sd:.1f}"


def probe_table(results: list, data: str) -> Table:
    """``thaw probe``: one row per model, linear and k-NN probes as mean +- sd over the folds."""
    table = Table(
        title=f"{data}: frozen features, {results[0].folds}-fold stratified cross-validation "
        f"over train+val ({results[0].images} images)",
        caption="accuracy and macro-F1 in %, mean +- sd over folds; linear: logistic regression, L2 chosen "
        "on an inner split; k-NN: cosine, k chosen on an inner split",
    )
    for col in ("model", "dims", "linear acc", "linear F1", "k-NN acc", "k-NN F1", "s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in results:
        cells = (mean_sd(v) for v in (r.linear, r.linear_f1, r.knn, r.knn_f1))
        table.add_row(r.model, str(r.dims), *cells, f"{r.seconds:.0f}")
    return table


MODEL_COLUMNS = (
    "model",
    "family",
    "params (M)",
    "GFLOPs",
    "top-1",
    "top-5",
    "input",
    "weights",
    "file (MB)",
    "offline",
)


def models_table(rows: list) -> Table:
    """``thaw models``: the zoo, one row per model."""

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = Table(
        caption=f"{len(rows)} models. GFLOPs at 224x224 (multiply-adds); top-1/top-5: ImageNet-1k, "
        "for the weights shown; offline: they load with no download"
    )
    for col in MODEL_COLUMNS:
        table.add_column(col, justify="left" if col in ("model", "family", "weights", "offline") else "right")
    for r in rows:
        table.add_row(
            r.name,
            r.family,
            f"{r.params / 1e6:.1f}",
            num(r.gflops, ".2f"),
            num(r.top1, ".1f"),
            num(r.top5, ".1f"),
            str(r.input_size),
            r.weights,
            num(r.file_mb, ".1f"),
            "yes" if r.offline else "-",
        )
    return table


def predictions_jsonl(preds: list, k: int | None) -> None:
    for p in preds:
        print(json.dumps(p.to_dict(k), allow_nan=False if p.error is None else True).replace("NaN", "null"))


def predictions_csv(preds: list, names: list[str], k: int | None) -> None:
    writer = csv.writer(sys.stdout)
    tops = [c for i in range(1, (k or 0) + 1) for c in (f"top{i}", f"p_top{i}")]
    writer.writerow(["path", "prediction", "confidence", *tops, *[f"p_{c}" for c in names], "error"])
    for p in preds:
        if p.error:
            writer.writerow([p.path, "", "", *[""] * len(tops), *[""] * len(names), p.error])
            continue
        top = [v for c, q in p.top(k or 0) for v in (c, f"{q:.4f}")]
        probs = [f"{p.probabilities[c]:.4f}" for c in names]
        writer.writerow([p.path, p.label, f"{p.confidence:.4f}", *top, *probs, ""])


def predictions_table(preds: list, k: int | None, decision: str) -> Table:
    table = Table(caption=None if decision.startswith("argmax: the most") else f"decision: {decision}")
    for col in ("image", "prediction", "confidence", *(["top " + str(k)] if k else []), "error"):
        table.add_column(col, justify="right" if col == "confidence" else "left")
    for p in preds:
        top = [", ".join(f"{c} {100 * q:.1f}%" for c, q in p.top(k))] if k else []
        if p.error:
            table.add_row(p.path, "-", "-", *["-"] * len(top), p.error)
        else:  # a multi-label image with no label over its threshold: (none)
            label = p.label if p.labels is None or p.labels else "(none)"
            table.add_row(p.path, label, f"{100 * p.confidence:.1f}%", *top, "")
    return table


def _auc_ci(m: Metrics) -> str:
    return f" [95% CI {m.ci['auc'][0]:.3f}-{m.ci['auc'][1]:.3f}]" if "auc" in m.ci else ""


def evaluation_lines(e) -> list[str]:
    """``thaw evaluate``: the metrics in one line (multi-label: then one line per label)."""
    m = e.metrics
    if m.per_label:
        return [
            f"{e.data} ({e.note}, {m.n} images, {len(m.per_label)} labels): mean AUC {m.auc:.3f}{_auc_ci(m)}"
            f", label-wise accuracy {100 * m.accuracy:.1f}%, exact match {100 * m.subset_accuracy:.1f}%, "
            f"macro-F1 {m.macro_f1:.3f}, mean sensitivity {100 * m.sensitivity:.1f}%, mean specificity "
            f"{100 * m.specificity:.1f}%; ECE {m.ece:.3f} (label-wise)",
            *per_label_lines(m, e.split),
        ]
    operating = (
        f"; at threshold {m.threshold:.3f}: sensitivity {100 * m.sensitivity:.1f}%, "
        f"specificity {100 * m.specificity:.1f}%"
        if m.sensitivity == m.sensitivity
        else ""
    )
    return [
        f"{e.data} ({e.note}, {m.n} images): accuracy {100 * m.accuracy:.1f}%, "
        f"balanced {100 * m.balanced_accuracy:.1f}%, macro-F1 {m.macro_f1:.3f}, AUC {m.auc:.3f}{_auc_ci(m)}"
        f"{operating}; ECE {m.ece:.3f}"
    ]


def phase_lines(summary: RunSummary) -> list[str]:
    """``thaw demo``: each phase's test accuracy, and what it gained over the first."""
    lines, first = [], None
    for result in summary.phases.values():
        what = (
            "frozen backbone, head only" if not result.backbone_lr else f"backbone lr {result.backbone_lr:g}"
        )
        gained = f"  ({100 * (result.test.accuracy - first):+.1f} points)" if first is not None else ""
        lines.append(f"{result.name} ({what}): test accuracy {100 * result.test.accuracy:.1f}%{gained}")
        first = result.test.accuracy if first is None else first
    return lines


def folds_lines(summary: dict) -> list[str]:
    """``thaw fit --folds``: mean +- sd and the 95% interval of each metric over the folds."""
    lines = []
    for split, metrics in summary.items():
        for name, s in metrics.items():
            if s["mean"] is not None:
                low, high = s["ci95"]
                lines.append(
                    f"{split} {name}: {100 * s['mean']:.1f} +- {100 * s['sd']:.1f} "
                    f"(95% CI {100 * low:.1f} to {100 * high:.1f})"
                )
    return lines


def name_lines(rows: list[tuple[str, str]]) -> list[str]:
    """Name and description, the names padded to one width (``thaw strategies``)."""
    width = max(len(name) for name, _ in rows)
    return [f"{name:<{width}}  {line}" for name, line in rows]
