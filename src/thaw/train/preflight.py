"""What can be checked before a run folder exists: the model and its weights, and settings that could
only fail once training reaches them. A run refused here leaves nothing behind; one refused later would
leave a folder whose ``thaw resume`` fails the same way. Multi-label data refuses the settings that have
no meaning for it."""

from __future__ import annotations

import torch

from thaw.core.config import BN_HELD, RunConfig
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier


def check_run(config: RunConfig, plans: list[PhasePlan], class_names: list[str], multilabel: bool) -> None:
    """Build the model once (name, weights name or file, offline availability, input channels), off the
    run's random stream, and refuse batch norm in train mode on batches of one image."""
    with torch.random.fork_rng(devices=[]):  # the run builds its own model later, from its seed
        model = build_classifier(
            config.model, len(class_names), class_names, config.data.image_size, multilabel
        )
    solved = [p.name for p in plans if p.interpolate_from or (p.features == "cached" and p.train == "head")]
    trains_bn = [p.name for p in plans if p.bn_policy not in BN_HELD and p.name not in solved]
    if config.data.batch_size < 2 and trains_bn and "batchnorm" in model.norm_kind:
        raise ThawError(
            f"--batch-size {config.data.batch_size} with --bn-policy {config.bn_policy}: {trains_bn[0]} "
            f"trains batch norm, which needs batches of 2 or more images; give --batch-size 2 or more, "
            f"or --bn-policy frozen"
        )


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
