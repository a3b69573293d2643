"""A linear head solved to convergence on cached features: multinomial logistic regression by full-batch
L-BFGS, its L2 strength chosen on validation loss. Deterministic, no epoch count, no learning rate.

Features are centred and divided by one global scale for the solve (better conditioned, and an L2
strength means the same for every backbone); both are folded back into the weights, so the head takes
the backbone's raw features. Features are not standardised one by one: that would give a feature of tiny
variance a huge weight, and the first steps of fine-tuning, which move every feature, would then blow
up the logits.

Multi-label (``train_y`` [N, K] of 0/1): K independent logistic regressions (a sigmoid each, binary
cross-entropy summed over the labels, so each label's L2 strength means what it means for one logistic
regression), solved together, their common L2 strength chosen on the validation loss the same way. The
losses in ``curve`` are then per label (the mean over the labels, as training reports them) and the
accuracies label-wise at 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from thaw.train.losses import loss_for

L2_GRID = (10.0, 3.0, 1.0, 0.3, 0.1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)  # strongest first
PAST_MINIMUM = 3  # L2 strengths tried after the one with the lowest validation loss
TOLERANCE = (0.02, 0.002)  # relative, absolute: validation losses this close to the lowest count as equal


@dataclass
class HeadSolution:
    weight: torch.Tensor  # [C, D], for raw features
    bias: torch.Tensor  # [C]
    l2: float
    curve: list[dict]  # per L2 strength: train and validation loss and accuracy, L-BFGS iterations


def head_loss(logits, y, weight=None, multilabel: bool = False) -> torch.Tensor:
    """Cross-entropy (``weight`` per class), or for multi-label ``y`` the binary cross-entropy summed over
    the labels and averaged over the images (``weight``: each label's positive weight)."""
    return loss_for(multilabel)(logits, y, weight, reduction="label-sum")


def _scores(logits, y, multilabel: bool) -> tuple[float, float]:
    """The loss (per label for multi-label) and accuracy (label-wise at 0.5) reported in the curve."""
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        return float(loss), float(((logits >= 0) == y.bool()).float().mean())
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def solve_head(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    val_x: torch.Tensor,
    val_y: torch.Tensor,
    num_classes: int,
    grid: tuple[float, ...] = L2_GRID,
    max_iter: int = 500,
    class_weight: torch.Tensor | None = None,
    multilabel: bool = False,
) -> HeadSolution:
    """Fit ``CE(x W^T + b) + l2 / 2 * ||W||^2`` (``multilabel``: :func:`head_loss`'s summed binary
    cross-entropy) for each L2 strength (warm-started from the stronger one; ``PAST_MINIMUM`` strengths
    past the lowest validation loss, then stop) and keep the strongest whose
    validation loss is within ``TOLERANCE`` of the lowest: on separable data the weakest penalties reach
    the same (near zero) validation loss with ever larger weights, and a head with huge weights makes the
    first steps of fine-tuning blow up."""
    x, v = train_x.float(), val_x.float()
    mean = x.mean(0)
    scale = (x - mean).pow(2).sum(1).mean().sqrt().clamp_min(1e-12) / x.shape[1] ** 0.5  # RMS per feature
    z, zv = (x - mean) / scale, (v - mean) / scale
    weight = torch.zeros(num_classes, z.shape[1], requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    curve, solutions = [], []
    for l2 in grid:
        iterations = _lbfgs(z, train_y, weight, bias, l2, max_iter, class_weight, multilabel)
        with torch.no_grad():
            train_loss, train_accuracy = _scores(z @ weight.T + bias, train_y, multilabel)
            val_loss, val_accuracy = _scores(zv @ weight.T + bias, val_y, multilabel)
            point = {
                "l2": l2,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "iterations": iterations,
            }
        curve.append(point)
        solutions.append((weight.detach().clone(), bias.detach().clone()))
        lowest = min(range(len(curve)), key=lambda i: curve[i]["val_loss"])
        if (
            len(curve) - 1 - lowest >= PAST_MINIMUM
        ):  # validation loss has risen since: weaker ones overfit more
            break
    lowest = min(p["val_loss"] for p in curve)
    chosen = next(
        i for i, p in enumerate(curve) if p["val_loss"] <= lowest * (1 + TOLERANCE[0]) + TOLERANCE[1]
    )
    l2, (w, b) = curve[chosen]["l2"], solutions[chosen]
    raw_weight = w / scale  # fold the scaling into the head: W z + b = (W / s) x + (b - (W / s) m)
    raw_bias = b - raw_weight @ mean
    return HeadSolution(raw_weight, raw_bias, l2, curve)


def _lbfgs(
    z: torch.Tensor,
    y: torch.Tensor,
    weight,
    bias,
    l2: float,
    max_iter: int,
    class_weight=None,
    multilabel: bool = False,
) -> int:
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = head_loss(z @ weight.T + bias, y, class_weight, multilabel) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return int(optimizer.state[optimizer._params[0]].get("n_iter", 0))


def solve_into(model, train, val, class_weight=None) -> HeadSolution:
    """The head solved on cached features ``train`` and ``val`` (:class:`thaw.data.features.Features`),
    ``class_weight`` per class (``--balance loss``), and copied into ``model``'s linear head."""
    solution = solve_head(
        train.tensor(),
        torch.from_numpy(train.labels),
        val.tensor(),
        torch.from_numpy(val.labels),
        len(model.class_names),
        class_weight=class_weight,
        multilabel=model.multilabel,
    )
    with torch.no_grad():
        model.head[-1].weight.copy_(solution.weight)
        model.head[-1].bias.copy_(solution.bias)
    return solution
