"""``--bn-policy tracked``: batch-norm statistics that follow the weights (issue 25).

Phase 2 keeps every backbone batch norm in eval mode, as Keras and timm advise: its running statistics
are ImageNet's, and phase 1's head was solved on the features they give. But the weights below a frozen
batch norm move, so the mean and spread of its input move with them, and the frozen statistics no longer
normalise it: a shift of ``d`` in a channel's input leaves the layer as ``d * gamma / sqrt(running_var)``
(above 10 at the median in MobileNetV2, up to 100 in its depthwise layers), and the layers above add to
it. That is phase 2's first-epoch collapse: on the synthetic small-mark tiles the weights after one epoch
score 92.5% on validation with the statistics they trained with and 98.5% (phase 1: 99.3%) with the same
weights and statistics that followed them (``bench/phase2_opening.py``, ``bn-end``).

Training batch norm instead (``--bn-policy train``) re-estimates the statistics from the target images,
which are not ImageNet's, and the solved head reads other features from the first step. ``tracked`` keeps
what phase 1 solved: at the phase's start it measures each batch norm's input mean ``m0`` and variance
``v0`` per channel on fixed calibration images (training images, eval view); before every validation it
measures them again (``m1``, ``v1``) with the current weights, in one pass in which each layer is set
before it normalises, and moves its statistics by as much as its input moved:

    k = sqrt(v1 / v0)        running_mean = m1 - (m0 - mean0) * k        running_var = var0 * k**2

(``eps`` kept exact), so each batch norm's output on those images keeps, channel by channel, the mean and
spread it had when the phase began. The
batch norms still do not train (their statistics are set, not learned), so the gradient steps of the
epoch run through the statistics of the epoch before. The statistics are buffers: the checkpoints, the
saved weights and the exported model carry them. The correction is transitive (taken from a point that
was itself corrected, it gives the same statistics, to float rounding), so a resumed phase takes its
reference where it restarts and ends where an uninterrupted one does: the same weights and metrics, the
statistics to rounding (``tests/test_resume.py``).

``--bn-policy matched`` (the default; :class:`MatchedStatistics`) trains batch norm instead, from phase 1's
features, and measures its statistics again before every validation (:func:`precise`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import lightning as L
import torch
from torch import nn

from thaw.core.config import BN_PRECISE_BATCHES
from thaw.train.freeze import BN_TYPES

FOLD_BATCHES = 8  # training batches whose input moments ``matched`` folds in


@contextmanager
def hooked_eval(model: nn.Module, layers: list[nn.Module], before: Callable) -> Iterator[None]:
    """``model`` in eval mode (every batch norm on its running statistics) with ``before`` as a forward
    pre-hook on each of ``layers``; hooks removed and every module's mode restored afterwards."""
    hooks = [b.register_forward_pre_hook(before) for b in layers]
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)


def calibration_images(dataset, image_size: int) -> torch.Tensor:
    """Training images spread evenly over the training set (every class where it is sorted by class), in
    the view they are validated in: 128 up to 160 px, fewer above (they pass as one batch)."""
    n = len(dataset)
    count = max(32, min(128, round(128 * (160 / image_size) ** 2)))
    picks = torch.linspace(0, n - 1, min(count, n)).round().long().unique()
    return torch.stack([dataset[int(i)][0] for i in picks])


class TrackedStatistics(L.Callback):
    """Moves the statistics of the backbone's batch norms in eval mode with their inputs (module docs)."""

    def __init__(self, images: torch.Tensor):
        self.images = images
        self.reference: list[dict[str, torch.Tensor]] | None = None

    @staticmethod
    def layers(pl_module) -> list[nn.Module]:
        """The batch norms in eval mode from the first trained layer group up: theirs are the statistics
        that go stale (below it, the inputs do not move, and those layers are left bitwise as they are)."""
        model, groups = pl_module.model, pl_module.groups
        if not groups:
            return []
        kept = {id(m) for m in pl_module._eval_modules}
        above = {id(m) for m in model.group_modules(range(min(groups), len(model.layer_groups)))}
        return [
            m
            for m in model.backbone.modules()
            if isinstance(m, BN_TYPES) and id(m) in kept and id(m) in above
        ]

    def on_train_start(self, trainer, pl_module) -> None:
        if self.reference is None:
            layers = self.layers(pl_module)
            inputs = self._inputs(pl_module, layers, set_stats=False)
            self.reference = [
                {"mean": b.running_mean.clone(), "var": b.running_var.clone(), "m": m, "v": v}
                for b, (m, v) in zip(layers, inputs)
            ]

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.reference is not None and not trainer.sanity_checking:
            self._inputs(pl_module, self.layers(pl_module), set_stats=True)

    @torch.no_grad()
    def _inputs(self, pl_module, layers: list[nn.Module], set_stats: bool) -> list[tuple[torch.Tensor, ...]]:
        """Each layer's input mean and variance per channel over the calibration images; with
        ``set_stats``, each layer's statistics moved by them before it normalises. One pass of all the
        images as one batch, so that a layer is set from the output of the layers below as they now are."""
        index = {id(b): i for i, b in enumerate(layers)}
        stats: list[tuple[torch.Tensor, torch.Tensor]] = [None] * len(layers)  # type: ignore[list-item]
        model = pl_module.model
        device = next(model.parameters()).device

        def before(module, args):
            i = index[id(module)]
            x = args[0].float()
            dims = [0, *range(2, x.dim())]  # every axis but the channels'
            m, v = x.mean(dims), x.var(dims, unbiased=False)
            stats[i] = (m.cpu(), v.cpu())
            if set_stats:
                ref = {k: t.to(device) for k, t in self.reference[i].items()}
                tiny = 1e-12  # a channel dead at the start and still: scale 1
                scale = ((v + tiny) / (ref["v"] + tiny)).sqrt()  # how much wider the input now is
                # the input standardised the same way as at the start: (x - m1) / (scale * s0) there is
                # (x0 - m0) / s0, so mean and spread out of the layer are those of the start
                # (written so that an input that has not moved leaves both bitwise as they were)
                module.running_mean.copy_(ref["mean"] * scale + (m - ref["m"] * scale))
                module.running_var.copy_((ref["var"] * scale**2 + module.eps * (scale**2 - 1)).clamp_min(0))

        with hooked_eval(model, layers, before):
            model.backbone(self.images.to(device))
        return stats


class MatchedStatistics(L.Callback):
    """``--bn-policy matched``: batch norm in train mode in the trained groups (as ``train``), with each of
    those layers first re-expressed so that phase 1's features come out of it unchanged.

    ``train`` normalises each batch by its own statistics, which are the target images', not ImageNet's
    that phase 1's head was solved on, so phase 2 opens on other features. ``matched`` measures each such
    layer's input mean ``m`` and variance ``v`` on training batches (their training view, the path phase 1
    computed) before the phase, and moves the normalisation into the affine parameters:

        weight' = weight * sqrt(v + eps) / sqrt(var0 + eps)
        bias'   = bias + weight * (m - mean0) / sqrt(var0 + eps)
        running_mean, running_var = m, v

    In eval mode the layer then computes exactly what it did (``weight' (x - m) / sqrt(v + eps) + bias'``
    is ``weight (x - mean0) / sqrt(var0 + eps) + bias``), and in train mode, where a batch's statistics are
    near ``m`` and ``v``, nearly so. From there the statistics follow the weights as in any train-mode
    batch norm, and the gradient sees them. Done once per phase; a resumed phase finds it done in its
    checkpoint (``state_dict``).

    Before every validation, the running statistics of those layers are measured again at the current
    weights (:func:`precise`) over the first ``precise_batches`` batches of the epoch just trained, instead
    of the exponential moving average training leaves: at phase 2's peak LR that average, taken under
    weights that kept moving, scored 32.8% on validation where the same weights with their own statistics
    scored 96.3% (small-mark tiles, epoch 2). 0: the moving average, as torch leaves it."""

    def __init__(self, batches: int = FOLD_BATCHES, precise_batches: int = BN_PRECISE_BATCHES):
        self.batches, self.precise_batches = batches, precise_batches
        self.done = False

    def state_dict(self) -> dict:
        return {"done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.done = bool(state.get("done", False))

    @staticmethod
    def layers(pl_module) -> list[nn.Module]:
        """The backbone's batch norms that train in this phase and can take the normalisation in."""
        held = {id(m) for m in pl_module._eval_modules}
        return [
            m
            for m in pl_module.model.backbone.modules()
            if isinstance(m, BN_TYPES) and id(m) not in held and m.affine and m.track_running_stats
        ]

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.done:
            fold(pl_module, self.layers(pl_module), trainer.train_dataloader, self.batches)
        self.done = True

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.precise_batches and not trainer.sanity_checking:
            # the epoch's own order (EpochSampler: a function of seed and epoch), so a resumed run measures
            # on the same batches
            precise(pl_module, self.layers(pl_module), trainer.train_dataloader, self.precise_batches)


@torch.no_grad()
def moments(
    pl_module, layers: list[nn.Module], batches, count: int, train: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor] | None]:
    """Each of ``layers``' input mean and (population) variance per channel, in double, over the first
    ``count`` of ``batches`` (``(x, y)`` pairs) through ``pl_module``: with every batch norm on its running
    statistics (the path phase 1 computed), or with ``train`` each of ``layers`` normalising by its batch's
    own statistics, as in a training step (their running statistics untouched). None for a layer off the
    path (a cached prefix). Off the caller's random stream; under DDP the sums are taken over the ranks,
    so every rank gets the same moments."""
    index = {id(b): i for i, b in enumerate(layers)}
    sums: list[torch.Tensor | None] = [None] * len(layers)

    def before(module, args):
        x = args[0].double()
        dims = [0, *range(2, x.dim())]
        total = x.sum(dims)
        s = torch.stack([total, (x * x).sum(dims), torch.full_like(total, x.numel() / x.shape[1])])
        i = index[id(module)]
        sums[i] = s if sums[i] is None else sums[i] + s

    device = next(pl_module.parameters()).device
    with (
        hooked_eval(pl_module, layers, before),
        torch.random.fork_rng(devices=[]),
        _batch_statistics(layers if train else []),
    ):
        for x, _ in itertools.islice(batches, count):
            pl_module._forward(x.to(device))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        for s in sums:
            if s is not None:  # the same layers are off the path on every rank
                torch.distributed.all_reduce(s)
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for s in sums:
        if s is None:
            out.append(None)
            continue
        m = s[0] / s[2]
        out.append((m, (s[1] / s[2] - m * m).clamp_min(0)))
    return out


@contextmanager
def _batch_statistics(layers: list[nn.Module]) -> Iterator[None]:
    """``layers`` in train mode without touching their running statistics (each normalises by its batch)."""
    tracked = [b.track_running_stats for b in layers]
    for b in layers:
        b.train()
        b.track_running_stats = False
    try:
        yield
    finally:
        for b, t in zip(layers, tracked):
            b.track_running_stats = t


@torch.no_grad()
def fold(pl_module, layers: list[nn.Module], batches, count: int = FOLD_BATCHES) -> None:
    """Fold each of ``layers``' input moments, measured on the first ``count`` of ``batches`` (``(x, y)``
    pairs) through ``pl_module`` with every batch norm on its running statistics, into its affine
    parameters and running statistics (:class:`MatchedStatistics`). Off the caller's random stream; under
    DDP the moments are summed over the ranks, so every rank folds the same."""
    if not layers:
        return
    for b, mv in zip(layers, moments(pl_module, layers, batches, count)):
        if mv is None:  # not on the path (a cached prefix)
            continue
        m, v = mv
        old = (b.running_var.double() + b.eps).sqrt()
        new = (v + b.eps).sqrt()
        weight = b.weight.double()
        b.bias.copy_(b.bias.double() + weight * (m - b.running_mean.double()) / old)
        b.weight.copy_(weight * new / old)
        b.running_mean.copy_(m)
        b.running_var.copy_(v)


@torch.no_grad()
def precise(pl_module, layers: list[nn.Module], batches, count: int) -> None:
    """Set each of ``layers``' running statistics to its input's population mean and variance over the
    first ``count`` of ``batches`` at the current weights, every layer normalising by its batch as in
    training ("precise BN", Wu & Johnson 2021, as pycls and detectron2 do before evaluating): what the
    exponential moving average of training only approximates, from batches taken under weights that
    have since moved."""
    for b, mv in zip(layers, moments(pl_module, layers, batches, count, train=True)):
        if mv is not None:
            b.running_mean.copy_(mv[0])
            b.running_var.copy_(mv[1])
