"""Metrics and reports as data: predictions, accuracy / macro-F1 / AUC / confusion, and the plots."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_confusion_matrix,
    multiclass_f1_score,
)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities [N, C] and labels [N] over a loader, in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for x, y in loader:
        probs.append(model(x.to(device)).float().softmax(dim=1).cpu())
        labels.append(torch.as_tensor(y))
    model.train(was_training)
    return torch.cat(probs), torch.cat(labels)


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """accuracy, balanced accuracy, macro-F1, AUC (binary: of class 1; multiclass: macro one-vs-rest),
    loss (cross-entropy), the confusion matrix and the count."""
    num_classes = probs.shape[1]
    preds = probs.argmax(dim=1)
    present = labels.unique().numel() > 1
    auc = (
        multiclass_auroc(probs, labels, num_classes, average="macro")
        if present
        else torch.tensor(float("nan"))
    )
    if num_classes == 2 and present:
        from torchmetrics.functional.classification import binary_auroc

        auc = binary_auroc(probs[:, 1], labels)
    nll = torch.nn.functional.nll_loss(probs.clamp_min(1e-12).log(), labels)
    return {
        "n": int(labels.numel()),
        "accuracy": float((preds == labels).float().mean()),
        "balanced_accuracy": float(multiclass_accuracy(preds, labels, num_classes, average="macro")),
        "macro_f1": float(multiclass_f1_score(preds, labels, num_classes, average="macro")),
        "auc": float(auc),
        "loss": float(nll),
        "confusion": multiclass_confusion_matrix(preds, labels, num_classes).tolist(),
    }


def write_metrics_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch, both phases on one axis, the phase boundary marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    x = [r["step_epoch"] for r in rows]
    for ax, metric in zip(axes, ("loss", "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{metric}") for r in rows]
            ax.plot(x, ys, style, markersize=3, label=split)
        boundaries = [r["step_epoch"] - 0.5 for a, r in zip(rows, rows[1:]) if a["phase"] != r["phase"]]
        for b in boundaries:
            ax.axvline(b, color="grey", linestyle="--")
            ax.text(b, ax.get_ylim()[1], " phase 2 ", va="top", ha="left", fontsize=8, color="grey")
        ax.set_xlabel("epoch (both phases)")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: list[list[int]], class_names: list[str], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    size = min(12, 2 + 0.6 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    top = max(max(row) for row in confusion) or 1
    for i, row in enumerate(confusion):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
