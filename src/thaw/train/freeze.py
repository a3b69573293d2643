"""Freezing, unfreezing and the batch-norm policy: small pure functions on the model contract."""

from __future__ import annotations

from torch import nn

from thaw.core.config import BN_HELD
from thaw.models import Classifier
from thaw.train.adapters import chosen_parameters

BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


def last_groups(model: Classifier, unfreeze: int | None) -> list[int]:
    """Indices of the last ``unfreeze`` layer groups (all of them for None)."""
    n = len(model.layer_groups)
    return list(range(n)) if unfreeze is None else list(range(max(0, n - unfreeze), n))


def set_trainable(model: Classifier, groups: list[int], bn_policy: str, trainable: str = "all") -> None:
    """The head and the given layer groups train; every other backbone parameter is frozen. ``trainable``
    (``PhasePlan.trainable``) narrows what trains inside the groups: their biases, their norms, or none of
    their weights (LoRA and SSF train adapters beside them, ``adapters.attach``).

    With ``bn_policy="fastai"`` batch-norm affine parameters train everywhere (fastai's ``train_bn``).
    """
    model.backbone.requires_grad_(False)
    model.head.requires_grad_(True)
    for p in chosen_parameters(model, groups, trainable):
        p.requires_grad_(True)
    if bn_policy == "fastai":
        for m in model.backbone.modules():
            if isinstance(m, BN_TYPES):
                m.requires_grad_(True)


def batchnorm_eval(model: Classifier, groups: list[int], bn_policy: str) -> list[nn.Module]:
    """The batch-norm layers that must stay in eval mode (running statistics fixed) while training.

    ``frozen`` and ``tracked``: every backbone BN layer (``tracked`` sets their statistics from outside,
    ``thaw.train.tracked``). ``train`` and ``matched``: BN layers outside the trainable groups.
    ``fastai``: none.
    """
    all_bn = [m for m in model.backbone.modules() if isinstance(m, BN_TYPES)]
    if bn_policy in BN_HELD:
        return all_bn
    if bn_policy in ("train", "matched"):
        trainable = {id(m) for m in model.group_modules(groups)}
        return [m for m in all_bn if id(m) not in trainable]
    return []
