"""What can be checked before a run folder exists: the model and its weights, and settings that could
only fail once training reaches them. A run refused here leaves nothing behind; one refused later would
leave a folder whose ``thaw resume`` fails the same way."""

from __future__ import annotations

import torch

from thaw.core.config import RunConfig
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
    trains_bn = [p.name for p in plans if p.bn_policy != "frozen" and p.name not in solved]
    if config.data.batch_size < 2 and trains_bn and "batchnorm" in model.norm_kind:
        raise ThawError(
            f"--batch-size {config.data.batch_size} with --bn-policy {config.bn_policy}: {trains_bn[0]} "
            f"trains batch norm, which needs batches of 2 or more images; give --batch-size 2 or more, "
            f"or --bn-policy frozen"
        )
