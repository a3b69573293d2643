"""What a run prints: the plan, one line per epoch, and what each phase gained."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from tqdm import tqdm


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.1f}"


class Reporter:
    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=False, highlight=False)

    def say(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(text)

    def warn(self, text: str) -> None:
        tqdm.write(f"warning: {text}")

    def start(self, config, sources, model, loaders) -> None:
        sizes = ", ".join(f"{s} {len(d.images)}" for s, d in loaders.decoded.items())
        pre = model.preprocessing
        classes = len(sources.class_names)
        self.say(f"data: {sources.name} ({classes} classes; {sizes}; split {sources.split_origin})")
        self.say(
            f"model: {config.model.name} [{model.spec.source}] weights {config.model.weights}; "
            f"{len(model.layer_groups)} layer groups; {model.norm_kind}; input {pre.size}px "
            f"(resize {pre.resize_size}, {pre.interpolation}); bn_policy {config.bn_policy}"
        )
        self.say(f"run folder: {config.out}")

    def phase_start(self, plan, model) -> None:
        if plan.groups:
            what = (
                f"Phase 2, fine-tuning: {len(plan.groups)} of {len(model.layer_groups)} layer groups "
                f"unfrozen, head lr {plan.head_lr:g}, backbone lr {plan.backbone_lr:g}, new optimizer"
            )
        else:
            what = f"Phase 1, feature extraction: backbone frozen, new head, lr {plan.head_lr:g}"
        self.say(
            f"\n{what}; at most {plan.config.epochs} epochs, early stopping patience {plan.config.patience}"
        )

    def epoch(self, row: dict) -> None:
        self.say(
            f"  {row['phase']} epoch {row['epoch']:>3}: train loss {row.get('train_loss', float('nan')):.4f} "
            f"acc {_pct(row.get('train_acc'))} | val loss {row['val_loss']:.4f} acc {_pct(row['val_acc'])} "
            f"| {row['seconds']:.1f}s, {row['train_images_per_s']:.0f} img/s"
        )

    def phase_end(self, plan, result: dict) -> None:
        test = f", test acc {_pct(result['test']['accuracy'])}" if "test" in result else ""
        self.say(
            f"{plan.name}: best epoch {result['best_epoch']} of {result['epochs_run']}: "
            f"val acc {_pct(result['val']['accuracy'])}{test} ({result['seconds']:.0f}s)"
        )

    def finish(self, summary: dict, path) -> None:
        if self.quiet:
            return
        table = Table(title=f"{summary['dataset']} - {summary['model']}")
        table.add_column("phase")
        splits = [s for s in ("val", "test") if any(s in summary.get(p, {}) for p in ("phase1", "phase2"))]
        for s in splits:
            for metric in ("acc", "AUC"):
                table.add_column(f"{s} {metric}", justify="right")
        table.add_column("best/ran", justify="right")
        table.add_column("s", justify="right")
        for phase in ("phase1", "phase2"):
            if phase not in summary:
                continue
            r = summary[phase]
            cells = [_pct(r[s][k]) if s in r else "-" for s in splits for k in ("accuracy", "auc")]
            label = phase + ("*" if summary["final_phase"] == phase else "")
            table.add_row(label, *cells, f"{r['best_epoch']}/{r['epochs_run']}", f"{r['seconds']:.0f}")
        if summary["gain"]:
            g = summary["gain"]
            cells = [f"{100 * g[s][k]:+.1f}" if s in g else "-" for s in splits for k in ("accuracy", "auc")]
            table.add_row("gain", *cells, "", "")
        self.console.print()
        self.console.print(table)
        self.console.print("* the saved model; accuracy and AUC in %; gain = phase 2 - phase 1, in points")
        if summary["gain"] and summary["final_phase"] == "phase1":
            self.console.print("phase 2 lowered validation accuracy: the saved model keeps phase 1's weights")
        self.console.print(
            f"results: {path}/ (summary.json, metrics.csv, curves.png, confusion.png, model.safetensors)"
        )
