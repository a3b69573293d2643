"""What runs after training, as a list: each analysis reads the trained run (``engine.Trained``) and fills
one field of :class:`RunSummary`, with the figure it draws into the run folder (rank 0 draws it).
``thaw.use.run`` composes them after the engine; a study or a notebook can run its own list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from thaw.core.files import write_atomic
from thaw.train.engine import Trained
from thaw.use.operating_point import operating_point
from thaw.use.reporting.figures import reliability
from thaw.use.reporting.plots import plot_drift
from thaw.use.shift import evaluate_shift


@dataclass(frozen=True)
class Finding:
    """An analysis's value (a ``RunSummary`` field) and its figure, drawn into the run folder."""

    value: Any
    figure: Callable[[Path], None] | None = None


Analysis = Callable[[Trained], Finding]


def forgetting(t: Trained) -> Finding:
    """How far each plan moved the backbone from its pretrained state (one forward over the probe images
    per plan); the model is back on the kept plan's weights afterwards."""
    model, run = t.model, t.ctx.run
    found = {}
    for plan in t.resolved.plans:
        model.load_state_dict(run.load_weights(plan.name))
        found[plan.name] = t.probe.diagnose(model)
    model.load_state_dict(run.load_weights(t.final))
    return Finding(found, lambda folder: plot_drift(found, folder / "drift.png"))


def operating(t: Trained) -> Finding:
    """The kept model's metrics at the threshold chosen on validation (and with TTA), with test CIs."""
    config, model, split = t.ctx.config, t.model, final_split(t)
    scored = {s: (torch.from_numpy(p.probs), torch.from_numpy(p.labels)) for s, p in t.predictions.items()}
    point = operating_point(
        scored, model.class_names, model.multilabel, config.tta, config.target_sensitivity, config.seed
    )
    if point.rule.startswith("argmax:"):  # a binary run with too few validation images of a class
        t.ctx.report.warn(f"no decision threshold chosen; {point.rule}")

    def figure(folder: Path) -> None:
        probs, labels = (x.numpy() for x in scored[split])
        write_atomic(folder / "reliability.png", reliability(probs, labels, f"{t.final} on {split}"))

    return Finding(point, figure)


def shift(t: Trained) -> Finding:
    """``--shift`` corruptions and ``--ood DIR``: the kept model on shifted images (None when not asked)."""
    return Finding(evaluate_shift(t.model, t.ctx.loaders.decoded, t.ctx.config, t.ctx.report.say))


ANALYSES: dict[str, Analysis] = {  # the RunSummary field each fills, in the order they run
    "forgetting": forgetting,
    "operating": operating,
    "shift": shift,
}


def final_split(t: Trained) -> str:
    """Where the kept plan's figures are drawn: test where there is a test split, else validation."""
    return "test" if t.results[t.final].test is not None else "val"
