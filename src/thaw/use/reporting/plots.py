"""The figure file of a run folder drawn only there (drift.png): matplotlib, Agg, written atomically.
curves.png, confusion.png and reliability.png are the report's own figures
(:func:`thaw.use.reporting.figures.learning_curves`, :func:`~thaw.use.reporting.figures.confusion`,
:func:`~thaw.use.reporting.figures.reliability`), which the report then embeds as the run wrote them."""

from __future__ import annotations

from pathlib import Path

from thaw.core.files import atomic_path
from thaw.core.results import Forgetting
from thaw.use.reporting.figures import pyplot


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(path).suffix.lstrip("."))
    plt.close(fig)


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
