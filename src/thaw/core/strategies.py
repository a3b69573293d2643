"""A strategy is a list of phase plans; the engine (``engine.run_plans``) runs any list, in order.

A :class:`PhasePlan` is data (no torch): which layer groups train, the learning rate of the head and of
every backbone group, the schedule, the epoch budget and early stopping, the batch-norm policy, and the
extras a plan may carry (an L2-SP pull toward the pretrained weights). Each plan starts from the best
weights of the plan before it and gets a new optimizer built from exactly its trainable parameters.

The default strategy, ``two-phase``, is fastai's ``fine_tune`` written as two plans.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from thaw.core import yaml_file
from thaw.core.config import (
    BN_POLICIES,
    HEAD_AT,
    LR,
    LR_RATIO,
    OPTIMIZERS,
    SCHEDULES,
    PhaseConfig,
    RunConfig,
    unfreeze_groups,
)
from thaw.core.errors import ThawError

REGULARIZERS = ("none", "l2-sp")
MAX_PLANS = 50  # a list of plans is a recipe, a handful long; thousands are a mistake or an attack
FEATURES = ("online", "cached")
TRAINABLE = ("all", "bias", "norm", "lora", "ssf")
"""What trains inside a plan's trainable layer groups (``PhasePlan.trainable``; ``thaw.train.adapters``)."""


@dataclass(frozen=True)
class PhasePlan:
    """One phase of training, as data.

    ``train`` says which backbone layer groups train besides the head: ``head`` (none: feature
    extraction), ``all``, ``last:N``, ``first:N`` or ``groups:0,3,4`` (indices from the input side).
    The head trains at ``lr``; the topmost trainable group at ``lr / lr_ratio``, and each group below it
    at ``layer_decay`` times the LR of the group above (ULMFiT's discriminative LRs; timm's
    ``layer_decay``). ``group_lrs`` sets every group's LR explicitly instead (a frozen group ignores its
    entry). ``regularizer="l2-sp"`` adds ``regularizer_strength * ||w - w_pretrained||^2`` over the
    trainable backbone parameters to the loss (Li et al. 2018).

    ``features="cached"`` (head-only plans): the backbone runs once over every image (``views``
    augmented views per training image; 1 = the deterministic eval transform), and the head is solved to
    convergence on those features (L-BFGS, L2 strength chosen on validation) instead of trained by epochs.
    On a ``last:N`` plan: the frozen layers before the last N groups run once (``views`` per training
    image), and the last N groups and the head train by epochs on their cached activations
    (``thaw.train.prefix``; online, with the reason, where the backbone cannot be cut there).

    ``head_at``: the head's LR, ``lr`` or ``backbone`` (the topmost trainable group's, ``lr / lr_ratio``).
    Phase 2 starts from a solved head, and AdamW at the head's own LR moves it off its optimum in the first
    steps, flipping the images near the boundary (phase 2's opening, docs/concepts/opening.md); at the
    backbone's LR it stays near it while the backbone starts to move (issue 25).

    ``head_warmup_epochs``: the head's own linear LR warmup, where longer than ``warmup_epochs`` (a shorter
    one, 0 included, is the plan's). A phase that starts from a solved head can hold it near its optimum
    while the backbone starts to move (issue 25).

    ``interpolate_from`` makes the plan a weight-interpolation step instead of training (WiSE-FT,
    Wortsman et al. 2022): ``alpha * previous plan + (1 - alpha) * plan interpolate_from``, for every
    alpha in ``alphas``, the alpha with the best validation accuracy kept (the whole curve is reported).

    ``trainable`` says what trains inside the trainable groups (``thaw.train.adapters``): ``all`` their
    parameters; ``bias`` their biases (BitFit, Ben Zaken et al. 2022); ``norm`` the affine parameters of
    their batch/layer/group norms; ``lora`` a rank-``lora_rank`` update ``B @ A`` beside each of their
    convolution and linear weights (LoRA, Hu et al. 2022; B starts at zero); ``ssf`` a learnable scale and
    shift per output channel after each of their convolutions, linear layers and norms (SSF, Lian et al.
    2022; 1 and 0 at first). LoRA and SSF are merged into the weights at the end of the plan, so the model
    saved is a plain one. The head always trains in full.
    """

    name: str
    train: str = "head"
    lr: float = LR
    lr_ratio: float = LR_RATIO
    layer_decay: float = 1.0
    group_lrs: tuple[float, ...] | None = None
    epochs: int = 10
    patience: int = 3
    warmup_epochs: float = 0.0
    weight_decay: float = 0.01
    schedule: str = "cosine"
    head_warmup_epochs: float = 0.0
    head_at: str = "lr"
    bn_policy: str = "matched"
    label_smoothing: float = 0.0
    regularizer: str = "none"
    regularizer_strength: float = 0.0
    features: str = "online"
    views: int = 1
    interpolate_from: str | None = None
    alphas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    optimizer: str = "adamw"
    trainable: str = "all"
    lora_rank: int = 8

    def groups(self, n_groups: int) -> list[int]:
        """The indices of the backbone layer groups this plan trains, for a model with ``n_groups``."""
        kind, _, arg = self.train.partition(":")
        if kind == "head":
            return []
        if kind == "all":
            return list(range(n_groups))
        if kind in ("last", "first"):
            n = min(int(arg), n_groups)
            return list(range(n_groups - n, n_groups)) if kind == "last" else list(range(n))
        chosen = sorted({int(i) for i in arg.split(",")})
        if chosen[-1] >= n_groups:
            raise ThawError(
                f"plan {self.name}: train={self.train!r} but the model has {n_groups} layer groups"
            )
        return chosen

    def group_lr(self, n_groups: int) -> list[float]:
        """The LR of every backbone layer group (0.0 for the groups this plan keeps frozen)."""
        trainable = self.groups(n_groups)
        if self.group_lrs is not None:
            if len(self.group_lrs) != n_groups:
                raise ThawError(
                    f"plan {self.name}: group_lrs has {len(self.group_lrs)} values; the model has "
                    f"{n_groups} layer groups"
                )
            return [float(lr) if g in trainable else 0.0 for g, lr in enumerate(self.group_lrs)]
        top = self.backbone_lr()
        rank = {g: len(trainable) - 1 - i for i, g in enumerate(trainable)}  # 0 for the topmost group
        return [top * self.layer_decay ** rank[g] if g in rank else 0.0 for g in range(n_groups)]

    def describe(self, n_groups: int) -> str:
        if self.interpolate_from:
            return f"{self.name}: weights interpolated between {self.interpolate_from} and the plan before"
        groups = self.groups(n_groups)
        if self.features == "cached" and not groups:
            views = f", {self.views} augmented views per image" if self.views > 1 else ""
            return f"{self.name}: backbone frozen, head solved to convergence on cached features{views}"
        if not groups:
            return f"{self.name}: backbone frozen, head only, lr {self.lr:g}"
        lrs = [lr for lr in self.group_lr(n_groups) if lr]
        spread = f"{min(lrs):g}..{max(lrs):g}" if min(lrs) != max(lrs) else f"{lrs[0]:g}"
        extra = f", {self.regularizer} {self.regularizer_strength:g}" if self.regularizer != "none" else ""
        extra += ", frozen prefix cached" if self.features == "cached" else ""
        parts = TRAINED_PARTS.get(self.trainable, "").format(rank=self.lora_rank)
        extra += f", {parts}" if self.trainable != "all" else ""
        return (
            f"{self.name}: {len(groups)} of {n_groups} layer groups trainable, head lr {self.head_lr():g}, "
            f"backbone lr {spread}{extra}, new optimizer"
        )

    @property
    def kind(self) -> str:
        """The step that runs this plan (``engine.STEPS``): ``interpolate`` (WiSE-FT), ``online`` (trained by
        epochs on images), ``solve`` (the head solved on cached features of the frozen backbone) or
        ``prefix`` (the layers after a frozen prefix trained by epochs on its cached activations)."""
        if self.interpolate_from:
            return "interpolate"
        if self.features == "online":
            return "online"
        return "solve" if self.train == "head" else "prefix"

    def backbone_lr(self) -> float:
        """The LR of the topmost trainable backbone group: ``lr / lr_ratio`` (the one place it is derived)."""
        return self.lr / self.lr_ratio

    def head_lr(self) -> float:
        """The head's LR: ``lr``, or with ``head_at="backbone"`` (and a backbone group that trains) the
        topmost trainable group's."""
        return self.backbone_lr() if self.head_at == "backbone" and self.train != "head" else self.lr

    def validate(self) -> PhasePlan:
        """The plan itself, or a :class:`ThawError` that names the plan, the value and what is valid."""
        where = f"plan {self.name!r}"
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ThawError(f"{where}: a plan needs a name usable as a file name, e.g. phase1")
        for check in (
            _check_train,
            _check_rates,
            _check_budget,
            _check_features,
            _check_choices,
            _check_trainable,
        ):
            check(self, where)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PhasePlan:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise ThawError(f"phase plan: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        if not isinstance(raw.get("name"), str):
            raise ThawError(f"phase plan: each plan needs a name, e.g. name: phase1; got {raw.get('name')!r}")
        for key, value in raw.items():
            _check_type(raw["name"], key, value, known[key].default)
        group_lrs = raw.get("group_lrs")
        raw = {**raw, "group_lrs": tuple(group_lrs) if group_lrs is not None else None}
        return cls(**{**raw, "alphas": tuple(raw.get("alphas", cls.alphas))})


def _check_type(name: str, key: str, value: Any, default: Any) -> None:
    """A plan setting of the kind its default is: a number for a number, a list of numbers for a list."""
    if key == "name" or value is None and key in ("group_lrs", "interpolate_from"):
        return
    number = (int, float)
    expected = (
        "a list of numbers"
        if key in ("alphas", "group_lrs")
        and not (isinstance(value, list | tuple) and all(_is(v, number) for v in value))
        else "a whole number"
        if isinstance(default, int) and not _is(value, int)
        else "a number"
        if isinstance(default, float) and not _is(value, number)
        else "text"
        if (isinstance(default, str) or key == "interpolate_from") and not isinstance(value, str)
        else ""
    )
    if expected:
        raise ThawError(f"plan {name!r}: {key} = {value!r} must be {expected}")


def _is(value: Any, kinds) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool)


def _check_train(plan: PhasePlan, where: str) -> None:
    kind, _, arg = plan.train.partition(":")
    ok = (
        kind in ("head", "all")
        and not arg
        or kind in ("last", "first")
        and arg.isdecimal()
        and int(arg) >= 1
        or kind == "groups"
        and bool(arg)
        and all(p.strip().isdecimal() for p in arg.split(","))
    )
    if not ok:
        raise ThawError(f"{where}: train={plan.train!r} must be head, all, last:N, first:N or groups:I,J,...")


def _check_rates(plan: PhasePlan, where: str) -> None:
    if not 0 < plan.lr <= 1:
        raise ThawError(f"{where}: lr {plan.lr} must be in (0, 1]")
    if not plan.lr_ratio >= 1:
        raise ThawError(f"{where}: lr_ratio {plan.lr_ratio} must be >= 1 (backbone LR = lr / lr_ratio)")
    if not 0 < plan.layer_decay <= 1:
        raise ThawError(f"{where}: layer_decay {plan.layer_decay} must be in (0, 1]; 1 = no decay")
    if plan.group_lrs is not None and not all(0 <= lr <= 1 for lr in plan.group_lrs):
        raise ThawError(f"{where}: every group_lrs value must be in [0, 1]")
    if not plan.regularizer_strength >= 0:
        raise ThawError(f"{where}: regularizer_strength {plan.regularizer_strength} must be >= 0")
    if not 0.0 <= plan.label_smoothing < 1.0:
        raise ThawError(f"{where}: label_smoothing {plan.label_smoothing} must be in [0, 1)")


def _check_budget(plan: PhasePlan, where: str) -> None:
    PhaseConfig(
        plan.epochs,
        plan.patience,
        plan.warmup_epochs,
        plan.weight_decay,
        plan.schedule,
        plan.head_warmup_epochs,
    ).validate(plan.name)
    if plan.epochs < 1 and not plan.interpolate_from:
        raise ThawError(f"{where}: epochs must be at least 1 (leave the plan out to skip it)")
    if plan.interpolate_from and not (plan.alphas and all(0 <= a <= 1 for a in plan.alphas)):
        raise ThawError(f"{where}: alphas must be values in [0, 1], e.g. 0, 0.5, 1")


def _check_features(plan: PhasePlan, where: str) -> None:
    if plan.features not in FEATURES:
        raise ThawError(f"{where}: features {plan.features!r} is not one of {', '.join(FEATURES)}")
    if not 1 <= plan.views <= 100:
        raise ThawError(f"{where}: views {plan.views} must be 1 (no augmentation) to 100")
    if plan.features != "cached":
        return
    kind = plan.train.partition(":")[0]
    why = (
        f"train={plan.train} trains layer groups that are not the last N"
        if kind not in ("head", "last")
        else "bn_policy fastai trains batch norm in the frozen layers"
        if plan.bn_policy == "fastai"
        else ""
    )
    if why:
        raise ThawError(
            f"{where}: features are cached only for a frozen backbone (train=head) or a frozen "
            f"prefix (train=last:N, e.g. --unfreeze 2), and {why}; use online"
        )


def _check_choices(plan: PhasePlan, where: str) -> None:
    for name, valid in (
        ("head_at", HEAD_AT),
        ("bn_policy", BN_POLICIES),
        ("schedule", SCHEDULES),
        ("optimizer", OPTIMIZERS),
        ("regularizer", REGULARIZERS),
    ):
        if getattr(plan, name) not in valid:
            raise ThawError(f"{where}: {name} {getattr(plan, name)!r} is not one of {', '.join(valid)}")


TRAINED_PARTS = {
    "bias": "their biases only (BitFit)",
    "norm": "their norm layers' scales and shifts only",
    "lora": "rank-{rank} updates of their conv and linear weights (LoRA, merged at the end)",
    "ssf": "a scale and shift per channel after each layer (SSF, merged at the end)",
}


def _check_trainable(plan: PhasePlan, where: str) -> None:
    if plan.trainable not in TRAINABLE:
        raise ThawError(
            f"{where}: trainable {plan.trainable!r} is not one of {', '.join(TRAINABLE)} (what trains inside "
            f"the trainable layer groups)"
        )
    if not 1 <= plan.lora_rank <= 1024:
        raise ThawError(f"{where}: lora_rank {plan.lora_rank} must be 1 to 1024, e.g. 8")
    if plan.trainable == "all" or plan.interpolate_from:
        return
    why = (
        "train=head trains no layer group; give train: all (or last:N)"
        if plan.train == "head"
        else "features must be online (activations are cached only for whole layers)"
        if plan.features != "online"
        else "the l2-sp penalty is for whole-weight fine-tuning; use regularizer: none"
        if plan.regularizer != "none"
        else ""
    )
    if why:
        raise ThawError(f"{where}: trainable {plan.trainable} needs layer groups to train in: {why}")


def check_plans(plans: list[PhasePlan]) -> list[PhasePlan]:
    if not plans:
        raise ThawError("the strategy has no phases with epochs > 0: nothing to train")
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise ThawError(f"phase plan names must be unique; got {', '.join(names)}")
    for i, p in enumerate(plans):
        if p.interpolate_from and (i == 0 or p.interpolate_from not in names[: i - 1]):
            raise ThawError(
                f"plan {p.name!r}: interpolate_from={p.interpolate_from!r} must name a plan before the one "
                f"it follows ({', '.join(names[: max(0, i - 1)]) or 'none'})"
            )
    return [p.validate() for p in plans]


def _phase(config: PhaseConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def two_phase(c: RunConfig) -> list[PhasePlan]:
    """Phase 1: the backbone frozen, a new head solved to convergence on cached features (or, with
    ``--phase1 online``, trained by epochs until validation loss stops improving).
    Phase 2: from phase 1's best weights, all (or the last N) layer groups unfrozen, a new optimizer,
    the backbone, and the solved head with it (``--phase2-head-lr``), at ``lr / lr_ratio`` (with
    ``--unfreeze N --phase2 cached``: on the cached activations of the frozen layers before them). A phase
    with 0 epochs is left out."""
    return [p for p in (_probe(c), _tune(c)) if p.epochs > 0]


def linear_probe(c: RunConfig) -> list[PhasePlan]:
    """Phase 1 only: the head solved to convergence on cached features of the frozen backbone."""
    return [dataclasses.replace(_probe(c), features="cached", views=c.cache_views)]


def finetune_high_lr(c: RunConfig) -> list[PhasePlan]:
    """No phase 1: every layer group trains from the start at the head's LR (the classic mistake)."""
    return [dataclasses.replace(_finetune(c), name="finetune", lr_ratio=1.0)]


def finetune_low_lr(c: RunConfig) -> list[PhasePlan]:
    """No phase 1: every layer group and the head train from the start at ``lr / lr_ratio``."""
    tune = _finetune(c)
    return [dataclasses.replace(tune, name="finetune", lr=tune.backbone_lr(), lr_ratio=1.0)]


def discriminative(c: RunConfig) -> list[PhasePlan]:
    """Two-phase, phase 2 with layer-wise LR decay: each group below the top at ``layer_decay`` times
    the LR of the group above (ULMFiT; timm's ``layer_decay``)."""
    probe, tune = _probe(c), _tune(c)
    return [probe, dataclasses.replace(tune, layer_decay=c.layer_decay)]


def gradual(c: RunConfig) -> list[PhasePlan]:
    """Two-phase with gradual unfreezing (ULMFiT): the top group trains for ``gradual_every`` epochs,
    then the top two, ..., up to ``gradual_groups``, then every group (or ``--unfreeze N``) for phase 2's
    budget. Each stage is
    its own plan: it starts from the best weights of the stage before and gets a new optimizer over
    exactly the groups thawed so far, so a resumed run restores exactly that state (the plan's own
    checkpoint) instead of re-deriving which groups should be trainable."""
    probe, tune = _probe(c), _tune(c)
    stages = [
        dataclasses.replace(
            tune, name=f"thaw{n}", train=f"last:{n}", epochs=c.gradual_every, patience=c.gradual_every
        )
        for n in range(1, c.gradual_groups + 1)
    ]
    return [probe, *stages, dataclasses.replace(tune, name="thaw-all")]


def lp_ft(c: RunConfig) -> list[PhasePlan]:
    """LP-FT (Kumar et al. 2022): the linear probe solved to convergence on cached features, then the
    whole network, head included, fine-tuned at one small LR, ``lr / lr_ratio``."""
    tune = _finetune(c)
    return [*linear_probe(c), dataclasses.replace(tune, lr=tune.backbone_lr(), lr_ratio=1.0)]


def l2_sp(c: RunConfig) -> list[PhasePlan]:
    """Two-phase with phase 2 pulled toward the pretrained weights instead of toward zero (Li et al.
    2018): the L2-SP penalty ``l2_sp * ||w - w0||^2`` replaces weight decay."""
    probe, tune = _probe(c), _tune(c)
    return [
        probe,
        dataclasses.replace(tune, regularizer="l2-sp", regularizer_strength=c.l2_sp, weight_decay=0.0),
    ]


def wise_ft(c: RunConfig) -> list[PhasePlan]:
    """Two-phase, then WiSE-FT (Wortsman et al. 2022): phase 1 and phase 2 weights interpolated, the
    mixing coefficient chosen on validation; the accuracy-vs-alpha curve is in the summary."""
    return [*two_phase(c), PhasePlan("wise-ft", interpolate_from="phase1")]


def surgical_first(c: RunConfig) -> list[PhasePlan]:
    """Two-phase with phase 2 training only the first layer group, plus the head (surgical
    fine-tuning, Lee et al. 2023: input-level shifts favour early layers)."""
    probe, tune = _probe(c), _tune(c)
    return [probe, dataclasses.replace(tune, name="surgical", train="first:1", features="online", views=1)]


def surgical_last(c: RunConfig) -> list[PhasePlan]:
    """Two-phase with phase 2 training only the last layer group, plus the head (surgical fine-tuning)."""
    probe, tune = _probe(c), _tune(c)
    return [probe, dataclasses.replace(tune, name="surgical", train="last:1")]


def _fewer(c: RunConfig, trainable: str) -> list[PhasePlan]:
    """Two-phase with phase 2 moving only part of the weights of its layer groups (``trainable``), from the
    solved head, at the default's LRs (``lr / lr_ratio`` for the backbone part, and for the head under
    ``--phase2-head-lr backbone``: on BreastMNIST the head's own LR for the backbone part overfit within 2-3
    epochs and ended 2-4 points lower on test, BENCHMARKS.md). Under the default
    batch-norm policy, ``matched``, batch norm is held (``frozen``): these recipes promise which tensors
    move, and ``matched`` would rewrite and renormalise every batch norm of the trained groups."""
    probe, tune = _probe(c), _tune(c)
    bn = "frozen" if c.bn_policy == "matched" else c.bn_policy
    tune = dataclasses.replace(tune, features="online", views=1, trainable=trainable, bn_policy=bn)
    return [probe, tune]


def bitfit(c: RunConfig) -> list[PhasePlan]:
    """Two-phase, phase 2 training only the biases of the backbone (and the head): BitFit (Ben Zaken et
    al. 2022). In a network whose convolutions have no bias (MobileNetV2, ResNet), these are the norms'
    shifts."""
    return _fewer(c, "bias")


def norm_only(c: RunConfig) -> list[PhasePlan]:
    """Two-phase, phase 2 training only the affine parameters (scale and shift) of the backbone's batch,
    layer and group norms, and the head."""
    return _fewer(c, "norm")


def lora(c: RunConfig) -> list[PhasePlan]:
    """Two-phase, phase 2 training a rank-8 update beside each convolution and linear weight of the backbone
    (attention's too), and the head; the updates are merged into the weights at the end (LoRA, Hu et al.
    2022)."""
    return _fewer(c, "lora")


def ssf(c: RunConfig) -> list[PhasePlan]:
    """Two-phase, phase 2 training a scale and shift per channel after each convolution, linear layer and
    norm of the backbone, and the head; merged into those layers at the end (SSF, Lian et al. 2022)."""
    return _fewer(c, "ssf")


def _common(c: RunConfig) -> dict[str, Any]:
    """What every plan of a strategy takes from the config as it is."""
    return {
        "lr": c.lr,
        "bn_policy": c.bn_policy,
        "label_smoothing": c.label_smoothing,
        "optimizer": c.optimizer,
    }


def _probe(c: RunConfig) -> PhasePlan:
    common = _common(c)
    return PhasePlan(
        "phase1", train="head", features=c.phase1_features, views=c.cache_views, **common, **_phase(c.phase1)
    )


def _finetune(c: RunConfig) -> PhasePlan:
    common = _common(c)
    return PhasePlan("phase2", train="all", lr_ratio=c.lr_ratio, **common, **_phase(c.phase2))


def _tune(c: RunConfig) -> PhasePlan:
    """Phase 2 of two-phase: all (or the last N) layer groups."""
    unfreeze = unfreeze_groups(c.unfreeze)
    train = "all" if unfreeze is None else f"last:{unfreeze}"
    return dataclasses.replace(
        _finetune(c),
        train=train,
        features=c.phase2_features,
        views=c.prefix_views,
        head_at=c.phase2_head_lr,
    )


STRATEGIES: dict[str, Callable[[RunConfig], list[PhasePlan]]] = {
    "linear-probe": linear_probe,
    "two-phase": two_phase,
    "finetune-high-lr": finetune_high_lr,
    "finetune-low-lr": finetune_low_lr,
    "discriminative": discriminative,
    "gradual": gradual,
    "lp-ft": lp_ft,
    "l2-sp": l2_sp,
    "wise-ft": wise_ft,
    "surgical-first": surgical_first,
    "surgical-last": surgical_last,
    "bitfit": bitfit,
    "norm-only": norm_only,
    "lora": lora,
    "ssf": ssf,
}


SUMMARIES = {
    "linear-probe": "phase 1 only: the head solved to convergence on cached features, backbone frozen",
    "two-phase": "the default: the head on the frozen backbone, then all groups and it at lr / lr_ratio",
    "finetune-high-lr": "no phase 1; everything at the head's lr (the classic mistake)",
    "finetune-low-lr": "no phase 1; everything, head included, at lr / lr_ratio",
    "discriminative": "two-phase, each group below the top at --layer-decay x the LR above (ULMFiT)",
    "gradual": "two-phase, one more group thawed from the top every --gradual-every epochs, then all",
    "lp-ft": "the cached linear probe, then the whole network at one LR, lr / lr_ratio (Kumar 2022)",
    "l2-sp": "two-phase, phase 2 pulled toward the pretrained weights (--l2-sp) instead of 0 (Li 2018)",
    "wise-ft": "two-phase, then phase 1 and 2 weights interpolated, alpha chosen on val (Wortsman 2022)",
    "surgical-first": "two-phase, phase 2 trains only the first layer group and the head (Lee 2023)",
    "surgical-last": "two-phase, phase 2 trains only the last layer group and the head",
    "bitfit": "two-phase, phase 2 trains only the backbone's biases and the head (BitFit)",
    "norm-only": "two-phase, phase 2 trains only the norms' scales and shifts and the head",
    "lora": "two-phase, phase 2 trains rank-8 updates of conv/linear weights, merged at the end (LoRA)",
    "ssf": "two-phase, phase 2 trains a scale and shift per channel after each layer, merged (SSF)",
}


def describe_strategies() -> list[tuple[str, str]]:
    """(name, one line) for every named strategy, for ``thaw strategies``, and ``auto``."""
    named = [
        (name, SUMMARIES.get(name, (build.__doc__ or "").split(".")[0])) for name, build in STRATEGIES.items()
    ]
    return [*named, ("auto", "thaw fit: a search over these within --time-budget; the default unless beaten")]


def check_named(config: RunConfig) -> None:
    """``config.strategy`` names one strategy; ``auto`` (a search over them, ``thaw.studies.auto``) is refused
    here, before a study (``--folds``, ``curve``) creates its folder."""
    if config.strategy == "auto":  # thaw.fit hands it to thaw.studies.auto before any plan is built
        raise ThawError(
            "--strategy auto is a search over strategies, run by thaw fit alone (not with --folds, nor by "
            f"compare, curve or lr-find); here give one strategy: {', '.join(STRATEGIES)}"
        )
    if config.strategy not in STRATEGIES:
        raise ThawError(
            f"--strategy {config.strategy!r} is not one of {', '.join(STRATEGIES)}, or auto (thaw fit)"
        )


def plans_for(config: RunConfig) -> list[PhasePlan]:
    """The config's plans (``plans:`` in its YAML, ``--plans FILE``) or else the strategy named in
    ``config.strategy``, as a checked list of plans."""
    if config.plans is not None:
        return plans_from(config.plans, "plans")
    check_named(config)
    plans = STRATEGIES[config.strategy](config)
    return check_plans([p for p in plans if p.epochs > 0 or p.interpolate_from])


def strategy_name(config: RunConfig) -> str:
    """What ``summary.json`` calls the strategy: its name, or ``plans`` for a list of plans given as data."""
    return "plans" if config.plans is not None else config.strategy


def plans_from(raw: Any, where: str) -> list[PhasePlan]:
    """Plans given as data (a list of mappings of :class:`PhasePlan` settings), checked; a mistake is one
    :class:`ThawError` line that says where."""
    if not isinstance(raw, list) or not raw or not all(isinstance(r, dict) for r in raw):
        raise ThawError(
            f"{where}: must be a list of plans, each a mapping of plan settings, e.g. "
            f"[{{name: phase1, train: head, features: cached}}, {{name: phase2, train: all, lr: 0.001}}]"
        )
    if len(raw) > MAX_PLANS:
        raise ThawError(
            f"{where}: {len(raw)} plans, over thaw's cap of {MAX_PLANS} (a recipe is a handful of plans); "
            f"split the study into several runs"
        )
    try:
        return check_plans([PhasePlan.from_dict(r) for r in raw])
    except ThawError as err:
        raise ThawError(f"{where}: {err}") from None


def read_plans(path: str) -> list[dict[str, Any]]:
    """``--plans FILE``: a YAML list of plans, checked here (before any run folder); the list as given."""
    file = Path(path)
    if not file.is_file():
        raise ThawError(f"--plans {path}: no such file; give a YAML list of plans (see thaw strategies)")
    raw = yaml_file.load_file(file, f"--plans {path}")
    plans_from(raw, f"--plans {path}")
    return raw


def for_role(role: str, config: RunConfig, plans: list[PhasePlan]) -> tuple[int, PhasePlan] | None:
    """The plan the strategy gives ``role`` and the index it runs at (its training batches' seed):
    ``head``, the first plan that trains the head alone (where none does, phase 1 of the two-phase recipe);
    ``backbone``, the first that trains backbone groups (None where none does); ``pseudo``, the round
    after pseudo-labelling, after the last plan: the last plan that trains backbone groups (where none
    does, phase 2 of the two-phase recipe), online, at least one epoch. ``config`` has numbers for its LRs
    (:meth:`RunConfig.resolved`)."""
    trained = [(i, p) for i, p in enumerate(plans) if not p.interpolate_from]
    if role == "head":
        return next(((i, p) for i, p in trained if p.train == "head"), (0, _probe(config)))
    if role == "backbone":
        return next(((i, p) for i, p in trained if p.train != "head"), None)
    if role == "pseudo":
        tuned = [p for _, p in trained if p.train != "head"]
        tune = tuned[-1] if tuned else _tune(config)
        epochs = max(tune.epochs, 1)
        pseudo = dataclasses.replace(tune, name="pseudo", features="online", views=1, epochs=epochs)
        return len(plans), pseudo.validate()
    raise ValueError(f"no plan has the role {role!r}; roles: head, backbone, pseudo")
