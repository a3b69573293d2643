"""What a run prints: the plan, one line per epoch, and what each phase gained over the one before."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from thaw.results import PhaseResult, RunSummary


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


class Reporter:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(highlight=False)

    def say(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text)

    def warn(self, text: str) -> None:
        tqdm.write(f"warning: {text}", file=sys.stderr)

    def start(self, config, sources, model, loaders, plans) -> None:
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
        if hw is not None:
            from thaw.train import distributed

            extras = [
                name for name, on in (("compile", hw.compile), ("channels-last", hw.channels_last)) if on
            ]
            self.say(
                f"hardware: {distributed.accelerator(hw)} x {hw.devices} device(s) x {hw.num_nodes} node(s) "
                f"({distributed.size()} process(es), {hw.dist_strategy}); precision {hw.precision}"
                + "".join(f"; {e}" for e in extras)
                + f"; {config.data.num_workers} workers; images in {getattr(loaders, 'store', 'memory')}"
            )

    def phase_start(self, plan, model, resumed: bool = False) -> None:
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
        self.say(
            f"  {row['phase']} epoch {row['epoch']:>3}: train loss {row.get('train_loss', float('nan')):.4f} "
            f"acc {_pct(row.get('train_acc'))} | val loss {row['val_loss']:.4f} acc {_pct(row['val_acc'])} "
            + (f"AUC {row['val_auc']:.3f} " if row.get("val_auc") is not None else "")
            + f"| {row['seconds']:.1f}s, {row['train_images_per_s']:.0f} img/s"
        )

    def phase_end(self, result: PhaseResult) -> None:
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

    def finish(self, summary: RunSummary, path) -> None:
        """The result table, printed with --quiet too."""
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
