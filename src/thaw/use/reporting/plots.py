"""The figure files of a run folder drawn only there (reliability.png, drift.png): matplotlib, Agg, each
written atomically. curves.png and confusion.png are the report's own figures
(:func:`thaw.use.reporting.figures.learning_curves`, :func:`~thaw.use.reporting.figures.confusion`),
which the report then embeds as the run wrote them."""

from __future__ import annotations

from pathlib import Path

import torch

from thaw.core.files import atomic_path
from thaw.core.results import Forgetting
from thaw.use.reporting.figures import pyplot


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip("."))
    plt.close(fig)


def plot_reliability(probs: torch.Tensor, labels: torch.Tensor, path: Path, title: str = "", bins: int = 15):
    """Reliability diagram: mean top-class confidence vs accuracy per confidence bin, bar width = bin,
    the diagonal = perfect calibration; the ECE in the title. Multi-label: every (image, label)
    probability against how often that label is present, per bin."""
    plt = pyplot()

    multilabel = labels.ndim == 2
    if multilabel:
        conf, correct = probs.flatten().float(), labels.flatten().float()
    else:
        conf, pred = probs.max(1)
        correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            acc, mean_conf = float(correct[inside].mean()), float(conf[inside].mean())
            ece += float(inside.float().mean()) * abs(acc - mean_conf)
            ax.bar(float(lo), acc, width=float(hi - lo), align="edge", edgecolor="black", alpha=0.7)
            ax.plot([mean_conf], [acc], "k.", markersize=4)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (every label)" if multilabel else "confidence (top class)")
    ax.set_ylabel("share present" if multilabel else "accuracy")
    ax.set_title(f"{title} ECE {ece:.3f}".strip(), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def plot_drift(diagnostics: dict[str, Forgetting], path: Path) -> None:
    """Weight drift per layer group (input -> output), one line per plan."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, d in diagnostics.items():
        ax.plot(
            range(len(d.weight_drift)), d.weight_drift, marker="o", ms=3, label=f"{name} (CKA {d.cka:.3f})"
        )
    ax.set_xlabel("layer group (input -> output)")
    ax.set_ylabel("||w - w0|| / ||w0||")
    ax.set_title("weight drift from the pretrained backbone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
