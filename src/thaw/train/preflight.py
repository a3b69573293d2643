"""What can be checked before a run folder exists: the model and its weights, and settings that could
only fail once training reaches them. A run refused here leaves nothing behind; one refused later would
leave a folder whose ``thaw resume`` fails the same way. Multi-label data refuses the settings that have
no meaning for it."""

from __future__ import annotations

from dataclasses import replace

import torch

from thaw.core.config import BN_HELD, MATCHED_MIN_BATCH, RunConfig, batchnorm_policy, bn_min_batch, override
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier


def check_run(
    config: RunConfig, plans: list[PhasePlan], class_names: list[str], multilabel: bool, warn=print
) -> tuple[RunConfig, list[PhasePlan]]:
    """Build the model once (name, weights name or file, offline availability, input channels), off the
    run's random stream; the config and plans to run, with batch norm held (:func:`batchnorm_for`)."""
    with torch.random.fork_rng(devices=[]):  # the run builds its own model later, from its seed
        model = build_classifier(
            config.model, len(class_names), class_names, config.data.image_size, multilabel
        )
    if "batchnorm" not in model.norm_kind:
        return config, plans
    return batchnorm_for(config, plans, warn)


def batchnorm_for(config: RunConfig, plans: list[PhasePlan], warn=print) -> tuple[RunConfig, list[PhasePlan]]:
    """Batch norm in train mode needs batches of several images. ``matched`` (the default) on batches of
    fewer than :data:`MATCHED_MIN_BATCH` is held as ``frozen``, said in one line; ``train`` and ``fastai``,
    which a user names, are refused on batches of one image (a batch of one has no spread)."""
    solved = [p.name for p in plans if p.interpolate_from or (p.features == "cached" and p.train == "head")]
    trains_bn = [p for p in plans if p.bn_policy not in BN_HELD and p.name not in solved]
    named = [p for p in trains_bn if p.bn_policy != "matched"]
    batch = config.data.batch_size
    if named and batch < bn_min_batch(named[0].bn_policy):
        raise ThawError(
            f"--batch-size {batch} with --bn-policy {named[0].bn_policy}: {named[0].name} trains batch norm, "
            f"which needs batches of 2 or more images; give --batch-size 2 or more, or --bn-policy frozen"
        )
    if batch >= MATCHED_MIN_BATCH or len(named) == len(trains_bn):  # nothing matched to hold
        return config, plans
    warn(
        f"--batch-size {batch}: batch norm held on its pretrained statistics (as --bn-policy frozen); "
        f"--bn-policy matched trains it on batches of {MATCHED_MIN_BATCH} or more images"
    )
    held = [replace(p, bn_policy=batchnorm_policy(p.bn_policy, batch)) for p in plans]
    return override(config, {"bn_policy": batchnorm_policy(config.bn_policy, batch)}), held


def check_multilabel(config, sources) -> None:
    """Settings that have no multi-label meaning are refused, each in one line, before a run starts."""
    if not sources.multilabel:
        return
    name = f"{sources.name} is multi-label (several labels per image)"
    if config.balance == "sampler":
        raise ThawError(
            f"--balance sampler draws images class by class; {name}, so an image has no one class: "
            f"use --balance loss (per-label positive weights) or none"
        )
    if config.pseudo_labels:
        raise ThawError(
            f"--pseudo-labels keeps confident single-class predictions; {name}: drop --pseudo-labels"
        )
    if config.ood:
        raise ThawError(f"--ood scores a folder of single-label classes; {name}: drop --ood")


def refuse_multilabel(sources, what: str) -> None:
    """A command that works on single-label data only, given multi-label data: one line."""
    if sources.multilabel:
        raise ThawError(
            f"{what} works on single-label data; {sources.name} is multi-label (several labels per "
            f"image): use thaw fit, evaluate and predict for it"
        )
