"""The report's figures as PNG bytes (matplotlib, Agg): learning curves, LRs per group, ROC, reliability,
confusion, the WiSE-FT curve. Pure functions of the run's numbers; nothing is written to disk here."""

from __future__ import annotations

import io
import math

import numpy as np

from thaw.core.results import PhaseResult


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    plt = pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def image_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _boundaries(ax, rows: list[dict]) -> None:
    """A dashed line where each plan starts, labelled with its name (the first plan too)."""
    if not rows:  # no plan trained by epochs (a cached solve alone): empty axes
        return
    starts = [r for i, r in enumerate(rows) if i == 0 or rows[i - 1]["phase"] != r["phase"]]
    ax.set_xlim(rows[0]["step_epoch"] - 0.6, rows[-1]["step_epoch"] + 0.4)
    top = ax.get_ylim()[1]
    for r in starts:
        x = r["step_epoch"] - 0.5
        if r is not rows[0]:
            ax.axvline(x, color="grey", linestyle="--", linewidth=1)
        ax.text(x, top, f" {r['phase']}", va="top", ha="left", fontsize=8, color="dimgrey")


def learning_curves(rows: list[dict], title: str) -> bytes:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    x = [r["step_epoch"] for r in rows]
    for ax, metric, label in zip(axes, ("loss", "acc"), ("cross-entropy loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [_float(r.get(f"{split}_{metric}")) for r in rows]
            ax.plot(x, ys, style, markersize=3, label=split)
        ax.set_xlabel("epoch (all phases)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if metric == "loss" else "lower right")
        _boundaries(ax, rows)
    fig.suptitle(title)
    fig.tight_layout()
    return png(fig)


def group_lrs(rows: list[dict], phases: dict[str, PhaseResult]) -> bytes:
    """The LR of the head and of every backbone layer group at the start of each epoch. Every group
    follows its plan's schedule, so group g's LR is ``group_lrs[g] * lr_head(t) / head_lr``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    x = [r["step_epoch"] for r in rows]
    head = [_float(r.get("lr_head")) for r in rows]
    n_groups = max((len(p.group_lrs) for p in phases.values()), default=0)
    cmap = plt.get_cmap("viridis")
    for g in range(n_groups):
        ys = []
        for r in rows:
            plan = phases.get(r["phase"])
            base = plan.group_lrs[g] if plan and g < len(plan.group_lrs) else 0.0
            scale = _float(r.get("lr_head")) / plan.head_lr if plan and plan.head_lr else 0.0
            ys.append(base * scale if base * scale > 0 else math.nan)
        if any(not math.isnan(y) for y in ys):
            ax.plot(x, ys, "-", color=cmap(g / max(1, n_groups - 1)), linewidth=1, label=f"group {g}")
    ax.plot(x, [h if h > 0 else math.nan for h in head], "k-o", markersize=3, label="head")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (all phases)")
    ax.set_ylabel("learning rate (epoch start)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=max(1, (n_groups + 1) // 8), loc="center left", bbox_to_anchor=(1.0, 0.5))
    _boundaries(ax, rows)
    fig.tight_layout()
    return png(fig)


def confusion(matrix: list[list[int]], class_names: list[str], title: str) -> bytes:
    plt = pyplot()
    n = len(class_names)
    size = min(10, 2.5 + 0.5 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return png(fig)


def roc(probs: np.ndarray, labels: np.ndarray, class_names: list[str], title: str) -> bytes:
    """Binary: the ROC of class 1 (the AUC thaw reports). Multiclass: one-vs-rest per class. Multi-label
    (``labels`` [N, K] of 0/1): one ROC per label."""
    from sklearn.metrics import auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    multilabel = labels.ndim == 2
    classes = [1] if len(class_names) == 2 and not multilabel else range(len(class_names))
    for c in classes:
        positive = labels[:, c] == 1 if multilabel else labels == c
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]} (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> tuple[list[dict], float]:
    """Per confidence bin: mean confidence, accuracy, count; and the expected calibration error. The bins
    are torchmetrics' (``[lo, hi)`` over 15 equal widths, a confidence of exactly 1 in a bin of its own), so
    the ECE is the one summary.json holds. Single-label: the top class's probability against whether it is
    right; multi-label (``labels`` [N, K] of 0/1): every (image, label) probability against the label."""
    probs = np.asarray(probs, dtype=np.float32)
    if labels.ndim == 2:
        confidence, correct = probs.ravel(), np.asarray(labels).ravel() == 1
    else:
        confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1, dtype=np.float32)
    index = np.searchsorted(edges, confidence, side="right") - 1  # torch.bucketize(right=True) - 1
    rows, ece = [], 0.0
    for b in range(bins + 1):
        inside = index == b
        n = int(inside.sum())
        if n:
            conf, acc = float(confidence[inside].mean()), float(correct[inside].mean())
            ece += n / len(confidence) * abs(acc - conf)
            hi = float(edges[b + 1]) if b < bins else 1.0
            rows.append({"lo": float(edges[b]), "hi": hi, "confidence": conf, "accuracy": acc, "n": n})
    return rows, ece


def reliability(probs: np.ndarray, labels: np.ndarray, title: str) -> bytes:
    """The reliability diagram (reliability.png, and the report's): accuracy per confidence bin as bars,
    each bin's mean confidence as a dot, its count at the bottom, the diagonal = perfect calibration, the
    ECE in the title (:func:`calibration`'s bins and number)."""
    rows, ece = calibration(probs, labels)
    multilabel = labels.ndim == 2
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.bar(
        [r["lo"] for r in rows],
        [r["accuracy"] for r in rows],
        width=[r["hi"] - r["lo"] for r in rows],
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="share present" if multilabel else "accuracy",
    )
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "ko", markersize=3)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for r in rows:  # the count of each bin at its foot; that of the confidence-1 bin above, at its dot's x
        ax.text(
            (r["lo"] + r["hi"]) / 2, 0.02 if r["hi"] > r["lo"] else 0.07, str(r["n"]), ha="center", fontsize=6
        )
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("predicted probability (every label)" if multilabel else "confidence (top-1 probability)")
    ax.set_ylabel("share present" if multilabel else "accuracy")
    ax.set_title(f"{title}; ECE {ece:.3f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return png(fig)


def interpolation_curve(curve: list[dict], alpha: float | None, title: str) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([c["alpha"] for c in curve], [c["val_accuracy"] for c in curve], "-o", markersize=3)
    if alpha is not None:
        ax.axvline(alpha, color="grey", linestyle="--", label=f"kept alpha {alpha:g}")
        ax.legend(fontsize=7)
    ax.set_xlabel("alpha (1 = the plan before, 0 = the plan interpolated from)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def solver_curve(curve: list[dict], l2: float, title: str) -> bytes:
    """Training and validation loss (and validation accuracy) of the cached-feature head per L2 strength."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    strengths = [c["l2"] for c in curve]
    ax.plot(strengths, [c["train_loss"] for c in curve], "-o", markersize=3, label="train loss")
    ax.plot(strengths, [c["val_loss"] for c in curve], "-s", markersize=3, label="val loss")
    ax.axvline(l2, color="grey", linestyle="--", label=f"kept L2 {l2:g}")
    ax.set_xscale("log")
    ax.set_xlabel("L2 strength")
    ax.set_ylabel("cross-entropy")
    right = ax.twinx()
    right.plot(strengths, [c["val_accuracy"] for c in curve], ":", color="green", label="val accuracy")
    right.set_ylabel("validation accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def lr_find_plot(found, title: str) -> bytes:
    """Loss vs LR (log scale): each batch's loss faint, the smoothed loss, the suggestion and the other
    rules marked, the default LR dashed (``found``: a ``thaw.train.lr_find.LRFind``)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(found.lrs, found.raw_losses, color="lightgrey", linewidth=1, label="batch loss")
    ax.plot(found.lrs, found.losses, color="tab:blue", linewidth=2, label="smoothed loss")
    index = found.lrs.index(found.suggestion)
    ax.plot(
        found.suggestion,
        found.losses[index],
        "o",
        color="red",
        markersize=9,
        label=f"{found.rule}: {found.suggestion:.2g}",
    )
    for (name, lr), marker in zip(found.alternatives.items(), ("^", "s")):
        i = (
            found.lrs.index(lr)
            if lr in found.lrs
            else min(range(len(found.lrs)), key=lambda j: abs(math.log(found.lrs[j] / lr)))
        )
        ax.plot(lr, found.losses[i], marker, color="dimgrey", markersize=7, label=f"{name}: {lr:.2g}")
    ax.axvline(found.default, color="green", linestyle="--", linewidth=1, label=f"default: {found.default:g}")
    finite = [v for v in found.losses if math.isfinite(v)]
    ax.set_ylim(min(finite) - 0.05 * abs(min(finite)), min(max(finite), 3 * finite[0]) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel(
        f"{found.swept} learning rate" + (f" (head fixed at {found.head_lr:.2g})" if found.head_lr else "")
    )
    ax.set_ylabel("training loss (cross-entropy)")
    ax.set_title(f"LR range test, phase {found.phase}: {title} ({found.stopped})", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png(fig)
