"""Steps of a run that are not epochs of training: the head solved on cached features, and weight
interpolation. Each takes what ``recipe.run_phase`` takes and returns a :class:`PhaseResult`."""

from __future__ import annotations

import time

import torch
from torch import nn

from thaw.core.results import PhaseResult
from thaw.core.strategies import PhasePlan
from thaw.data import features as feature_cache
from thaw.metrics.classification import classification_metrics
from thaw.models import Classifier
from thaw.train import distributed
from thaw.train.freeze import BN_TYPES
from thaw.train.head_solver import HeadSolution, solve_into
from thaw.train.prefix import plan_features
from thaw.train.probabilities import probabilities
from thaw.train.recipe import Context, finish_phase

Features = feature_cache.Features


def cached_head(model: Classifier, plan: PhasePlan, index: int, ctx: Context, before: dict) -> PhaseResult:
    """Phase 1 paid once: the frozen backbone runs over every image once (``plan.views`` views of each
    training image), and the linear head is solved to convergence on those features (L-BFGS, L2 strength
    chosen on validation loss). The model then predicts exactly what the solved head does on the cached
    features, and phase 2 starts from that head (LP-FT)."""
    ctx.report.phase_start(plan, model)
    start = time.perf_counter()
    train, splits = cached_features(model, plan, ctx)
    computed = [f for f in (train, *splits.values()) if not f.cached]
    feature_seconds = sum(f.seconds for f in computed)
    ctx.report.say(
        f"  features: {train.x.shape[0]} train rows x {train.x.shape[1]}"
        + (f" ({train.views} augmented views per image)" if train.views > 1 else "")
        + (f", computed in {feature_seconds:.1f}s" if computed else ", all from the cache")
    )
    solve_start = time.perf_counter()
    solution = solved_head(model, train, splits["val"], ctx)
    solve_seconds = time.perf_counter() - solve_start
    seconds = time.perf_counter() - start
    chosen = next(c for c in solution.curve if c["l2"] == solution.l2)
    row = {
        "phase": plan.name,
        "epoch": 1,
        "step_epoch": sum(r.epochs_run for r in before.values()) + 1,
        "train_loss": round(chosen["train_loss"], 6),
        "train_acc": round(chosen["train_accuracy"], 6),
        "val_loss": round(chosen["val_loss"], 6),
        "val_acc": round(chosen["val_accuracy"], 6),
        "lr_head": 0.0,
        "lr_backbone": 0.0,
        "seconds": round(seconds, 2),
        "train_images_per_s": round(train.x.shape[0] / feature_seconds, 1) if feature_seconds else 0.0,
    }
    ctx.report.epoch(row)
    record = solver_record(model, solution, train.views, feature_seconds, not computed, solve_seconds)
    return finish_phase(
        model,
        plan,
        ctx,
        val=solved_metrics(model, solution, splits["val"]),
        test=solved_metrics(model, solution, splits["test"]) if "test" in splits else None,
        **frozen_fields(
            model,
            seconds,
            row["train_images_per_s"],
            epochs_run=1,
            best_epoch=1,
            trainable_params=sum(p.numel() for p in model.head.parameters()),
        ),
        epochs=[row],
        curve=solution.curve,
        solver=record,
    )


def cached_features(model: Classifier, plan: PhasePlan, ctx: Context) -> tuple[Features, dict[str, Features]]:
    """The backbone's features of every split, from the cache or computed once (by rank 0; the other ranks
    read the cache): ``plan.views`` augmented views of each training image, or its eval transform."""
    with distributed.rank_zero_first():
        splits = tuple(s for s in ("val", "test") if s in ctx.loaders.decoded)
        found = plan_features(model.backbone, model, plan, ctx, splits)
    return found.pop("train"), found


@torch.no_grad()
def solved_metrics(model: Classifier, solution: HeadSolution, f: Features):
    """The metrics of the solved head on cached features: exactly what the model then predicts."""
    logits = torch.nn.functional.linear(f.tensor(), solution.weight, solution.bias)
    return classification_metrics(
        model.probabilities(logits), torch.from_numpy(f.labels), names=model.class_names
    )


def solved_head(model: Classifier, train: Features, val: Features, ctx: Context) -> HeadSolution:
    """The head solved on the features (class-weighted under ``--balance loss``), copied into the model."""
    class_weight = ctx.loaders.class_weights if ctx.config.balance == "loss" else None
    return solve_into(model, train, val, class_weight)


def solver_record(
    model: Classifier,
    solution: HeadSolution,
    views: int,
    feature_seconds: float,
    cached: bool,
    seconds: float,
) -> dict:
    """``PhaseResult.solver``: how the head was solved, and what was chosen."""
    kind = (
        "one logistic regression per label (sigmoid, binary cross-entropy)"
        if model.multilabel
        else "multinomial logistic regression"
    )
    return {
        "mode": "cached",
        "method": f"L-BFGS, {kind} on centred, scaled features",
        "l2": solution.l2,
        "chosen_on": "val_loss",
        "views": views,
        "features_seconds": round(feature_seconds, 1),
        "features_from_cache": cached,
        "solve_seconds": round(seconds, 1),
    }


def frozen_fields(model: Classifier, seconds: float, images_per_s: float, **fields) -> dict:
    """The :class:`PhaseResult` fields of a step that trains no backbone group by gradient."""
    n = len(model.layer_groups)
    return {
        "best_epoch": 0,
        "epochs_run": 0,
        "stopped_early": False,
        "seconds": round(seconds, 1),
        "train_images_per_s": images_per_s,
        "head_lr": 0.0,
        "backbone_lr": 0.0,
        "group_lrs": [0.0] * n,
        "trainable_groups": f"0/{n}",
        "trainable_params": 0,
        **fields,
    }


def interpolate(model: Classifier, plan: PhasePlan, index: int, ctx: Context, before: dict) -> PhaseResult:
    """WiSE-FT: ``alpha * (the plan before) + (1 - alpha) * (plan interpolate_from)``, every alpha scored on
    validation; the best accuracy (then the lowest loss) is kept."""
    loaders, report = ctx.loaders, ctx.report
    start = time.perf_counter()
    report.phase_start(plan, model)
    end = {k: v.clone() for k, v in model.state_dict().items()}
    origin = aligned(model, ctx.run.load_weights(plan.interpolate_from), end)
    curve, best = [], None
    for alpha in plan.alphas:
        model.load_state_dict(mix(origin, end, alpha))
        m = classification_metrics(*probabilities(model, loaders.val), names=model.class_names)
        curve.append({"alpha": alpha, "val_accuracy": m.accuracy, "val_loss": m.loss})
        if best is None or (m.accuracy, -m.loss) > best[0]:
            best = ((m.accuracy, -m.loss), alpha)
    alpha = best[1]
    model.load_state_dict(mix(origin, end, alpha))
    report.say(
        "  " + ", ".join(f"alpha {c['alpha']:g}: val acc {100 * c['val_accuracy']:.1f}" for c in curve)
    )
    seconds = time.perf_counter() - start
    return finish_phase(
        model, plan, ctx, **frozen_fields(model, seconds, 0.0, group_lrs=[]), alpha=alpha, curve=curve
    )


def aligned(
    model: nn.Module, origin: dict[str, torch.Tensor], end: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``origin`` with each batch norm re-expressed on ``end``'s running statistics, computing the same.

    In eval mode a batch norm is a per-channel affine map, ``a x + c`` with ``a = w / sqrt(var + eps)`` and
    ``c = b - a mean``. Where phase 2 trained batch norm (``matched``, ``train``) its statistics are not
    phase 1's, and mixing weights and statistics separately would mix two parametrisations: ``matched``'s
    fold alone rescales ``w`` by up to 10x. Re-expressed here as ``w' = a sqrt(var_end + eps)`` and
    ``b' = b + a (mean_end - mean)``, the mix interpolates ``a`` and ``c`` themselves, and alpha 0 is phase
    1's network. Layers whose statistics did not move are left bitwise as they were."""
    out = dict(origin)
    for name, m in model.named_modules():
        if not isinstance(m, BN_TYPES) or not (m.affine and m.track_running_stats):
            continue
        keys = [f"{name}.{k}" for k in ("weight", "bias", "running_mean", "running_var")]
        if not all(k in origin and k in end for k in keys):
            continue
        if torch.equal(origin[keys[2]], end[keys[2]]) and torch.equal(origin[keys[3]], end[keys[3]]):
            continue
        w, b, mean, var = (origin[k].double() for k in keys)
        end_mean, end_var = end[keys[2]].double(), end[keys[3]].double()
        a = w / (var + m.eps).sqrt()
        dtype = origin[keys[0]].dtype
        out[keys[0]] = (a * (end_var + m.eps).sqrt()).to(dtype)
        out[keys[1]] = (b + a * (end_mean - mean)).to(dtype)
        out[keys[2]], out[keys[3]] = end[keys[2]].clone(), end[keys[3]].clone()
    return out


def mix(
    origin: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``alpha * end + (1 - alpha) * origin`` for floating-point tensors; counters come from ``end``."""
    return {k: alpha * v + (1 - alpha) * origin[k] if v.is_floating_point() else v for k, v in end.items()}
