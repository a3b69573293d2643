"""What a run found, typed: one :class:`PhaseResult` per plan, and the :class:`RunSummary` of the run.

``summary.json`` is ``RunSummary.to_dict()``; ``RunSummary.read`` reads it back, including the layout
written before phases were a list (top-level ``phase1`` / ``phase2`` keys, version 1). Non-finite numbers
(an AUC on a split with one class) are written as ``null`` and read back as NaN: the file stays JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thaw.core.errors import ThawError

SUMMARY_VERSION = 2
GAIN_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc")
MULTILABEL, SINGLE_LABEL = "multilabel", "single-label"  # the task names summary.json and a model file record


@dataclass(frozen=True)
class Metrics:
    """Classification metrics on one split. ``auc``: binary, of class 1; multiclass, macro one-vs-rest;
    NaN when the split holds a single class.

    Multi-label (``thaw.metrics.multilabel``): ``auc`` is the mean of the per-label AUCs, ``accuracy``
    label-wise (Hamming) and ``subset_accuracy`` exact-match, both at the per-label thresholds;
    ``balanced_accuracy``,
    ``macro_f1``, ``sensitivity`` and ``specificity`` are means over the labels; ``confusion`` is empty
    and ``per_label`` holds each label's AUC, threshold, sensitivity, specificity, F1 and counts."""

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    auc: float
    loss: float
    confusion: list[list[int]]
    # binary: of class 1 (the positive class) at ``threshold`` (0.5 = the argmax); NaN for multiclass
    sensitivity: float = math.nan
    specificity: float = math.nan
    threshold: float = math.nan
    ece: float = math.nan  # expected calibration error of the top-class confidence, 15 bins
    ci: dict[str, list[float]] = field(default_factory=dict)  # bootstrap 95% intervals, where computed
    subset_accuracy: float | None = None  # multi-label: images with every label right (else None)
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)  # multi-label: by label name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Metrics:
        # summaries written before a metric existed lack it: it keeps its default (NaN, or None for a
        # multi-label figure, which a single-label run writes as null and reads back as None)
        values = {
            f.name: raw[f.name] if f.default is None else _number(raw[f.name])
            for f in dataclasses.fields(cls)
            if f.name in raw
        }
        if values.get("per_label"):
            values["per_label"] = {
                name: {k: _number(v) for k, v in row.items()} for name, row in values["per_label"].items()
            }
        return cls(**values)


@dataclass(frozen=True)
class Operating:
    """The saved model scored the way it will be used: with the decision threshold chosen on validation
    (binary tasks: Youden's J, or the lowest threshold reaching ``--target-sensitivity``; ``None`` for
    multiclass, which takes the argmax; multi-label: one per label in ``thresholds``, by label name),
    optionally with test-time augmentation; test metrics carry bootstrap 95% confidence intervals."""

    threshold: float | None
    rule: str
    tta: bool
    val: Metrics
    test: Metrics | None = None
    thresholds: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Operating:
        return cls(
            threshold=raw.get("threshold"),
            rule=raw.get("rule", ""),
            tta=bool(raw.get("tta", False)),
            val=Metrics.from_dict(raw["val"]),
            test=Metrics.from_dict(raw["test"]) if raw.get("test") else None,
            thresholds=raw.get("thresholds"),
        )


@dataclass(frozen=True)
class PhaseResult:
    """One plan's outcome, measured on its best epoch's weights."""

    name: str
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    seconds: float
    train_images_per_s: float
    head_lr: float
    backbone_lr: float  # the highest backbone group LR (0 when the backbone is frozen)
    group_lrs: list[float]
    trainable_groups: str  # "k/n"
    trainable_params: int
    val: Metrics
    test: Metrics | None = None
    epochs: list[dict] = field(default_factory=list)  # the rows of metrics.csv for this plan
    alpha: float | None = None  # a weight-interpolation step: the mixing coefficient kept
    curve: list[dict] = field(default_factory=list)  # validation accuracy and loss per alpha or L2 strength
    solver: dict = field(default_factory=dict)  # a head solved on cached features: what was chosen, and how
    halted: str | None = None  # why a non-finite loss or weight stopped the plan early, if one did
    features: dict = field(default_factory=dict)  # trained on images or on a cached frozen prefix, and why
    incoming: dict | None = None  # the score of the weights it started from, and whether it beat them

    def on(self, split: str) -> Metrics | None:
        return self.val if split == "val" else self.test if split == "test" else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str | None = None) -> PhaseResult:
        raw = {**raw, "name": raw.get("name", name)}
        raw["val"] = Metrics.from_dict(raw["val"])
        raw["test"] = Metrics.from_dict(raw["test"]) if raw.get("test") else None
        raw.setdefault("group_lrs", [])
        raw.setdefault("epochs", [])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class Forgetting:
    """How far a plan's weights moved from the pretrained backbone, measured on a fixed probe set of the
    run's validation images. ``cka``: linear CKA of pretrained vs fine-tuned pooled features (1.0 =
    unchanged). ``weight_drift``: ``||w - w0|| / ||w0||`` per layer group, input to output.
    ``imagenet_agreement``: top-1 agreement of the original ImageNet head on the fine-tuned features with
    the original model (None, and ``imagenet_note`` says why, when there is no ImageNet head)."""

    probe_images: int
    cka: float
    weight_drift: list[float]
    imagenet_agreement: float | None = None
    imagenet_note: str = ""

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Forgetting:
        return cls(
            **{
                **raw,
                "cka": _number(raw.get("cka")),
                "weight_drift": [_number(v) for v in raw["weight_drift"]],
            }
        )


@dataclass(frozen=True)
class Shift:
    """The saved model out of distribution. ``corruptions``: accuracy on corrupted copies of the ``split``
    images per corruption, one value per severity; ``corrupted_accuracy`` their mean, beside
    ``id_accuracy`` on the clean images. ``ood``: metrics on a user-given folder of the same classes."""

    split: str
    id_accuracy: float
    severities: list[int] = field(default_factory=list)
    corruptions: dict[str, list[float]] = field(default_factory=dict)
    corrupted_accuracy: float | None = None
    ood_path: str | None = None
    ood: Metrics | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Shift:
        raw = dict(raw)
        raw["ood"] = Metrics.from_dict(raw["ood"]) if raw.get("ood") else None
        return cls(**raw)


@dataclass(frozen=True)
class RunSummary:
    """A run: its data, model, the plans' results in order, the phase whose weights were saved, and what
    each phase gained over the one before it (per split and metric, in absolute units)."""

    dataset: str
    model: str
    classes: list[str]
    images: dict[str, int]
    phases: dict[str, PhaseResult]
    final_phase: str
    strategy: str = "two-phase"
    seed: int = 0
    gain: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    version: int = SUMMARY_VERSION
    model_sha256: str | None = None  # of model.safetensors as written: thaw.load refuses a changed file
    budget: dict | None = None  # a label budget: labelled and unlabelled images per class
    adabn: dict | None = None  # AdaBN: which images re-estimated how many batch-norm layers
    pseudo_labels: dict | None = None  # the pseudo-label round: how many, their accuracy, before/after
    operating: Operating | None = None  # the saved model at its chosen threshold (and TTA), with CIs
    hardware: dict[str, Any] = field(default_factory=dict)  # accelerator, devices, precision, ... as run
    forgetting: dict[str, Forgetting] = field(default_factory=dict)  # per trained plan
    shift: Shift | None = None  # with --shift corruptions or --ood DIR
    lr_find: dict = field(default_factory=dict)  # --lr auto: per phase, what thaw lr-find chose and how
    task: str = SINGLE_LABEL  # or MULTILABEL: ``classes`` are then the label names
    auto: dict = field(default_factory=dict)  # --strategy auto: the screening table and why the winner won
    augment: dict = field(default_factory=dict)  # --augment: the policy trained with, and what auto measured
    skipped_images: list[str] = field(default_factory=list)  # listed in split.csv, undecodable, left out

    @property
    def final(self) -> PhaseResult:
        return self.phases[self.final_phase]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["phases"] = {name: r.to_dict() for name, r in self.phases.items()}
        return out

    def to_json(self) -> str:
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunSummary:
        raw = dict(raw)
        if "phases" not in raw:  # version 1: phases at the top level, gain of phase2 over phase1
            names = [k for k in ("phase1", "phase2") if k in raw]
            raw["phases"] = {k: raw.pop(k) for k in names}
            old_gain = raw.pop("gain", {}) or {}
            raw["gain"] = {"phase2": old_gain} if old_gain else {}
            raw["version"] = 1
        raw["phases"] = {k: PhaseResult.from_dict(v, k) for k, v in raw["phases"].items()}
        if raw.get("operating"):
            raw["operating"] = Operating.from_dict(raw["operating"])
        raw["forgetting"] = {k: Forgetting.from_dict(v) for k, v in (raw.get("forgetting") or {}).items()}
        raw["shift"] = Shift.from_dict(raw["shift"]) if raw.get("shift") else None
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def read(cls, path: str | Path) -> RunSummary:
        path = Path(path)
        if path.is_dir():
            path = path / "summary.json"
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ThawError(
                f"no summary at {path}: is this a finished run folder made by `thaw fit`?"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ThawError(f"{path} is not a thaw run summary ({err})") from err


MONITORED = {
    "val_loss": "accuracy",
    "val_auc": "auc",
    "val_balanced_accuracy": "balanced_accuracy",
    "val_f1": "macro_f1",
}
"""The validation metric that picks the phase kept, per ``--monitor`` (val_loss: accuracy, as before)."""


def choose_final(results: dict[str, PhaseResult], monitor: str = "val_loss") -> str:
    """The plan whose weights are kept: the best validation accuracy (or, with ``--monitor val_auc``,
    ``val_balanced_accuracy`` or ``val_f1``, that metric), the later plan on a tie. So a fine-tuning
    phase that lowered the validation metric does not replace the weights before it."""
    order, metric = list(results), MONITORED[monitor]
    return max(order, key=lambda name: (_finite(getattr(results[name].val, metric)), order.index(name)))


def gains(results: dict[str, PhaseResult]) -> dict[str, dict[str, dict[str, float]]]:
    """What each plan added over the plan before it, per split and metric (positive = better)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    items = list(results.values())
    for before, after in zip(items, items[1:]):
        per_split = {}
        for split in ("val", "test"):
            a, b = before.on(split), after.on(split)
            if a is not None and b is not None:
                per_split[split] = {k: round(getattr(b, k) - getattr(a, k), 4) for k in GAIN_METRICS}
        out[after.name] = per_split
    return out


WALL_CLOCK = {"seconds", "train_images_per_s", "version", "features_from_cache"}  # and every *_seconds
"""A summary's fields that depend on the machine, its load or an earlier run's cache, not on the result."""


def without_clock(value: Any) -> Any:
    """A summary (as JSON data) less its :data:`WALL_CLOCK` fields and every ``*_seconds``: what two runs
    with the same seeds must agree on bit for bit, wherever and whenever they ran."""
    if isinstance(value, dict):
        return {
            k: without_clock(v)
            for k, v in value.items()
            if k not in WALL_CLOCK and not k.endswith("_seconds")
        }
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


def dumps(data: Any) -> str:
    """JSON with non-finite floats as null: ``json.dumps`` would write bare NaN, which is not JSON."""
    return json.dumps(_finite_json(data), indent=2, allow_nan=False) + "\n"


def _finite_json(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def _number(value: Any) -> Any:
    return float("nan") if value is None else value


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf
