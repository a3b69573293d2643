"""Partial unfreezing with the frozen prefix paid once.

With the last N layer groups trainable (``train="last:N"``) and batch norm frozen outside them, every layer
before them is a fixed function of the image. ``cached_prefix`` cuts the backbone there
(:mod:`thaw.models.split`), runs the prefix once over train and val (``plan.views`` augmented views per
training image; 1 = the deterministic eval transform) into a memory-mapped cache keyed like the feature
cache (``$THAW_HOME/cache/prefix/<key>``), and trains only the suffix (the last N groups, pooling, head)
on those activations: the same :func:`run_phase`, module, optimizer, early stopping, checkpoints and resume
as online training, fed activations instead of images. The final metrics are measured on the images
through the whole model.

Exact with ``views`` = 1 and augmentation off: the same batches in the same order give the same weights
(tests/test_prefix.py). Where the model cannot be cut, or the plan does not allow it, the phase trains
online and says why in one line (on screen and in ``summary.json``: ``phases.<plan>.features``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from thaw import data as thaw_data
from thaw.core import cache
from thaw.core.results import PhaseResult
from thaw.core.strategies import PhasePlan
from thaw.data import features as feature_cache
from thaw.data.images import EpochSampler, ShardSampler, sample_weights
from thaw.models import Classifier
from thaw.models.split import CannotSplit, Split, split_backbone
from thaw.train.recipe import Context, Feed, run_phase


def cached_prefix(model: Classifier, plan: PhasePlan, index: int, ctx: Context, before: dict) -> PhaseResult:
    """Train ``plan`` (``last:N``) on cached activations at the frozen prefix's boundary, or online with
    the reason when the backbone cannot be cut there."""
    config, loaders = ctx.config, ctx.loaders
    try:
        split = prefix_split(model, plan)
    except CannotSplit as why:
        record = {"mode": "online", "reason": str(why)}
        note = f"frozen prefix not cached ({why}); training online"
        return run_phase(
            model, plan, index, ctx, before, Feed(loaders.train(index), loaders.val_shard, None, record, note)
        )
    start = time.perf_counter()
    where = {"prefix": split.boundary, "first_group": split.first_group, "arch": model.spec.arch}
    cached = plan_features(
        split.prefix, model, plan, ctx, ("val",), where, cache.root("prefix"), f"--{plan.name} online"
    )
    train, val = cached["train"], cached["val"]
    computed = [f for f in (train, val) if not f.cached]
    seconds = sum(f.seconds for f in computed) if computed else time.perf_counter() - start
    record, note = describe(split, train.views, seconds, not computed)
    seed, shard = loaders.train_seed(index), (loaders.rank, loaders.world)  # under DDP: this rank's shard
    balanced = config.balance == "sampler"
    train_loader = activation_loader(train, split.shape, config.data.batch_size, seed, *shard, balanced)
    val_loader = activation_loader(val, split.shape, config.data.batch_size, None, *shard)
    suffix = split.suffix

    def forward(activation: torch.Tensor) -> torch.Tensor:
        return model.head(suffix(activation))

    return run_phase(model, plan, index, ctx, before, Feed(train_loader, val_loader, forward, record, note))


def plan_features(
    backbone: torch.nn.Module,
    model: Classifier,
    plan: PhasePlan,
    ctx: Context,
    splits: tuple[str, ...],
    where: dict | None = None,
    root: Path | None = None,
    way_out: str | None = "--phase1 online",
) -> dict[str, feature_cache.Features]:
    """The cached outputs of ``backbone`` (frozen: the whole backbone, or a prefix cut ``where``) for the
    training split, with ``plan.views`` augmented views per image when the plan's augmentation does
    anything (else the eval transform), and for ``splits`` (the eval transform)."""
    config, loaders, pre, where = ctx.config, ctx.loaders, model.preprocessing, where or {}
    augmented = plan.views > 1 and bool(loaders.policy.ops)
    evaluation = thaw_data.eval_transform(pre)

    def features(split: str, transform, transform_id: dict, views: int) -> feature_cache.Features:
        return feature_cache.features(
            backbone,
            loaders.sources.split(split),
            transform,
            {**transform_id, **where},
            pre,
            model.spec.in_channels,
            views=views,
            seed=config.seed,
            decoded=loaders.decoded[split],
            batch_size=max(config.data.batch_size, 64),
            root=root,
            warn=ctx.report.warn,
            channels_last=config.hardware.channels_last,
            way_out=way_out,
        )

    if augmented:
        augment = {"kind": "train", "augment": loaders.policy.spec()}
        train = features("train", loaders.train_transform, augment, plan.views)
    else:
        train = features("train", evaluation, {"kind": "eval"}, 1)
    return {"train": train, **{s: features(s, evaluation, {"kind": "eval"}, 1) for s in splits}}


def describe(split: Split, views: int, seconds: float, from_cache: bool) -> tuple[dict, str]:
    """The phase's ``features`` record for ``summary.json`` and its line on screen."""
    exact = not split.stochastic_prefix and views == 1
    record = {
        "mode": "cached-prefix",
        "boundary": split.boundary,
        "first_group": split.first_group,
        "activation_shape": list(split.shape),
        "views": views,
        "cache_seconds": round(seconds, 1),
        "from_cache": from_cache,
        "exact": exact,
        "not_exact_because": []
        if exact
        else [*split.stochastic_prefix, *([f"{views} augmented views"] if views > 1 else [])],
    }
    shown = f", {views} augmented views per image" if views > 1 else ""
    note = (
        f"frozen prefix cached ({split.describe()}{shown}), "
        + ("from the cache" if from_cache else f"computed in {seconds:.1f}s")
        + ("" if exact or views > 1 else f"; not exact: {', '.join(split.stochastic_prefix)}")
    )
    return record, note


def prefix_split(model: Classifier, plan: PhasePlan) -> Split:
    """The backbone cut before the plan's first trainable group, checked on a probe batch."""
    if plan.bn_policy == "fastai":
        raise CannotSplit("bn_policy fastai trains batch norm in the frozen prefix")
    n_groups = len(model.layer_groups)
    groups = plan.groups(n_groups)
    if not groups or groups != list(range(groups[0], n_groups)):
        raise CannotSplit(f"train={plan.train} does not leave a frozen prefix before trainable groups")
    if groups[0] == 0:
        raise CannotSplit(f"train={plan.train} trains every one of the {n_groups} layer groups")
    size = model.preprocessing.size
    probe = torch.randn(2, model.spec.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    return split_backbone(model.backbone, model.layer_groups, groups[0], probe)


class Activations(Dataset):
    """Cached activations, one view of each image per epoch: a key ``(i, seed)`` from :class:`EpochSampler`
    reads view ``seed % views`` of image ``i`` (the same after a resume); a plain index reads view 0."""

    def __init__(self, cached: feature_cache.Features, shape: tuple[int, ...]) -> None:
        self.x, self.labels, self.views, self.shape = cached.x, cached.labels, cached.views, shape

    def __len__(self) -> int:
        return len(self.labels) // self.views

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int | torch.Tensor]:
        i, seed = key if isinstance(key, tuple) else (key, 0)
        row = i * self.views + seed % self.views
        label = self.labels[row]  # a class index, or a multi-label row of 0/1
        target = int(label) if np.ndim(label) == 0 else torch.from_numpy(np.array(label))
        return torch.from_numpy(np.array(self.x[row])).reshape(self.shape), target


def activation_loader(
    cached: feature_cache.Features,
    shape: tuple[int, ...],
    batch_size: int,
    seed: int | None = None,
    rank: int = 0,
    world: int = 1,
    balanced: bool = False,
) -> DataLoader:
    """Batches of (activation, label); with ``seed``, shuffled (``balanced``: drawn class-balanced) exactly
    as the image loader of that seed; rank ``rank`` of ``world`` gets its shard, as the image loaders do."""
    dataset = Activations(cached, shape)
    shuffle = seed is not None
    if shuffle:
        weights = sample_weights(cached.labels[:: cached.views]) if balanced else None
        sampler = EpochSampler(len(dataset), seed, rank, world, weights)
    else:
        sampler = ShardSampler(len(dataset), rank, world) if world > 1 else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed or 0),
        drop_last=shuffle and len(sampler) % batch_size == 1,  # as the image loader does
    )
