"""A run's configuration as frozen dataclasses: defaults <- YAML file <- flags, resolved once.

No torch here: the config is data, validated with messages that name the value and the fix, written to
the run folder (``config.yaml``) and into the model file, and rerunnable with ``thaw fit --config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from thaw.errors import ThawError

BN_POLICIES = ("frozen", "train", "fastai")
"""How batch-norm layers behave while training:

- ``frozen`` (default): every backbone BN layer stays in eval mode in both phases; running statistics
  never change, and BN affine parameters train only where their layer group is unfrozen. This is the
  Keras guide's advice; on BreastMNIST, phase 2 with BN statistics updating on small batches was worse
  on every test metric than with them frozen (see BENCHMARKS.md).
- ``train``: BN layers in unfrozen groups use batch statistics and update running statistics (plain
  PyTorch behaviour); BN layers in frozen groups stay in eval mode.
- ``fastai``: BN layers are always in train mode and their affine parameters always trainable, even in
  frozen groups (fastai's ``train_bn=True``).
"""

DATA_FORMATS = ("auto", "split-folders", "folder", "csv", "npz")
IN_CHANNELS = ("replicate", "sum")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they become batches."""

    path: str = ""
    format: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_file: str | None = None
    image_size: int | None = None
    batch_size: int = 32
    augment: bool = True
    hflip: bool = True
    crop_scale_min: float = 0.5
    strict_images: bool = False
    num_workers: int = 0

    def validate(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ThawError(f"data format {self.format!r} is not one of {', '.join(DATA_FORMATS)}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ThawError(f"{name} = {value} must be in [0, 1), e.g. 0.15")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ThawError("val_fraction + test_fraction must leave some images for training (sum < 1)")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise ThawError(f"--image-size {self.image_size} is out of range: use 16 to 1024 pixels")
        if self.batch_size < 1:
            raise ThawError(f"--batch-size {self.batch_size} must be at least 1")
        if not 0.05 <= self.crop_scale_min <= 1.0:
            raise ThawError(f"crop_scale_min {self.crop_scale_min} must be in [0.05, 1]")


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained backbone, with which weights, and the new head."""

    name: str = "mobilenet_v2"
    weights: str = "DEFAULT"
    dropout: float = 0.2
    in_channels: str = "replicate"

    def validate(self) -> None:
        if not self.name:
            raise ThawError("--model is empty: give a name such as mobilenet_v2, resnet18 or timm/resnet18")
        if not 0.0 <= self.dropout < 1.0:
            raise ThawError(f"head dropout {self.dropout} must be in [0, 1)")
        if self.in_channels not in IN_CHANNELS:
            raise ThawError(f"in_channels {self.in_channels!r} is not one of {', '.join(IN_CHANNELS)}")


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of training. ``epochs`` is a maximum: early stopping on validation loss ends it sooner."""

    epochs: int = 10
    patience: int = 3
    warmup_epochs: float = 0.0
    weight_decay: float = 0.01
    schedule: str = "cosine"

    def validate(self, phase: str) -> None:
        if self.epochs < 0:
            raise ThawError(f"--{phase}-epochs {self.epochs} must be 0 (skip the phase) or more")
        if self.patience < 1:
            raise ThawError(f"{phase} patience {self.patience} must be at least 1")
        if self.warmup_epochs < 0:
            raise ThawError(f"{phase} warmup_epochs {self.warmup_epochs} must be 0 or more")
        if self.schedule not in SCHEDULES:
            raise ThawError(f"{phase} schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. ``lr`` is the head's learning rate in both phases; in phase 2 the
    backbone trains at ``lr / lr_ratio``."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    phase1: PhaseConfig = field(
        default_factory=lambda: PhaseConfig(epochs=15, patience=3, schedule="constant")
    )
    phase2: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=10, patience=3, warmup_epochs=1))
    lr: float = 1e-3
    lr_ratio: float = 10.0
    unfreeze: str = "all"
    bn_policy: str = "frozen"
    label_smoothing: float = 0.0
    seed: int = 0
    out: str | None = None

    def validate(self) -> RunConfig:
        self.data.validate()
        self.model.validate()
        self.phase1.validate("phase1")
        self.phase2.validate("phase2")
        if self.phase1.epochs == 0 and self.phase2.epochs == 0:
            raise ThawError("--phase1-epochs and --phase2-epochs are both 0: nothing to train")
        if not 0 < self.lr <= 1:
            raise ThawError(f"--lr {self.lr} must be in (0, 1]; 1e-3 is a good start for AdamW")
        if self.lr_ratio < 1:
            raise ThawError(f"--lr-ratio {self.lr_ratio} must be >= 1 (backbone LR = head LR / ratio)")
        unfreeze_groups(self.unfreeze)
        if self.bn_policy not in BN_POLICIES:
            raise ThawError(f"--bn-policy {self.bn_policy!r} is not one of {', '.join(BN_POLICIES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ThawError(f"label_smoothing {self.label_smoothing} must be in [0, 1)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config") -> RunConfig:
        return _build(cls, raw, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ThawError(f"config file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ThawError(f"config file {path} is not valid YAML: {err}".splitlines()[0]) from err
        if not isinstance(raw, dict):
            raise ThawError(f"config file {path} must hold a mapping (data:, model:, phase1:, ...)")
        return cls.from_dict(raw, source=str(path))


def unfreeze_groups(value: str | int) -> int | None:
    """``"all"`` -> None (every group); ``"N"`` -> the last N layer groups."""
    text = str(value).strip().lower()
    if text == "all":
        return None
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ThawError(f"--unfreeze {value!r} must be 'all' or a number of layer groups >= 1, e.g. --unfreeze 2")


def override(config: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """Apply dotted overrides such as ``{"data.batch_size": 16, "lr": 3e-4}``; ``None`` values are skipped."""
    raw = config.to_dict()
    for key, value in changes.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[leaf] = value
    return RunConfig.from_dict(raw)


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ThawError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
    values = {}
    for name, value in raw.items():
        sub = known[name].type
        nested = {"DataConfig": DataConfig, "ModelConfig": ModelConfig, "PhaseConfig": PhaseConfig}.get(
            str(sub)
        )
        if nested is not None:
            if not isinstance(value, dict):
                raise ThawError(f"{where}: {name} must be a mapping, got {value!r}")
            values[name] = _build(nested, value, f"{where}: {name}")
        else:
            values[name] = _coerce(value, str(sub), f"{where}: {name}")
    return cls(**values)


def _coerce(value: Any, type_name: str, where: str) -> Any:
    """Check a YAML/flag value against the field's annotated type (``int``, ``float | None``, ...)."""
    optional = type_name.endswith("| None")
    base = type_name.removesuffix("| None").strip()
    if value is None and optional:
        return None
    kinds = {"int": int, "float": (int, float), "bool": bool, "str": (str, int)}
    expected = kinds.get(base)
    if expected is None:
        return value
    if isinstance(value, bool) and base != "bool" or not isinstance(value, expected):
        raise ThawError(f"{where} = {value!r} must be of type {type_name}")
    return float(value) if base == "float" else str(value) if base == "str" else value
