"""Draws docs/img/far-domain.png: test accuracy after phase 1 (the frozen backbone's converged linear
probe) and after phase 2 (fine-tuned), on two domains far from ImageNet. The numbers are copied from
BENCHMARKS.md ("The demo" and "Strategies side by side", NEU); run from the repository root:
``python docs/img/far_domain.py``."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# test accuracy (%), per seed; MobileNetV2 IMAGENET1K_V1 at 64 px
DATA = {
    "digits (make demo)\n8x8 scans, 270 test images, 1 seed": {
        "phase 1: linear probe": [94.8],
        "phase 2: fine-tuned": [98.9],
    },
    "NEU steel defects\n6 classes, 270 test images, 3 seeds": {
        "phase 1: linear probe": [97.4, 97.4, 97.4],
        "phase 2: fine-tuned": [99.6, 100.0, 99.3],
        "no phase 1: all at 1e-3": [90.0, 55.6, 95.2],
    },
}
COLOURS = {
    "phase 1: linear probe": "#8c8c8c",
    "phase 2: fine-tuned": "#1f77b4",
    "no phase 1: all at 1e-3": "#d62728",
}


OUT = Path(__file__).with_name("far-domain.png")


def main(out: Path = OUT) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=False)
    for ax, (title, rows) in zip(axes, DATA.items()):
        for i, (name, values) in enumerate(rows.items()):
            mean = sum(values) / len(values)
            ax.bar(i, mean, color=COLOURS[name], width=0.6, label=name)
            ax.scatter([i] * len(values), values, color="black", s=12, zorder=3)
            ax.text(i, mean + 0.3, f"{mean:.1f}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(rows)), [n.split(": ")[0] for n in rows], fontsize=9)
        ax.set_ylim(50 if len(rows) > 2 else 90, 101.5)
        ax.set_title(title, fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_ylabel("test accuracy (%)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    fig.legend(handles, COLOURS, loc="lower center", ncol=3, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
