"""A run's configuration as frozen dataclasses: defaults <- YAML file <- flags, resolved once.

No torch here: the config is data, validated with messages that name the value and the fix, written to
the run folder (``config.yaml``) and into the model file, and rerunnable with ``thaw fit --config``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from thaw.core import yaml_file
from thaw.core.augment_policy import parse as parse_augment
from thaw.core.errors import ThawError


def setting(
    default: Any,
    help: str,
    flags: tuple[str, ...] = (),
    choices: tuple[str, ...] = (),
) -> Any:
    """A config field with what the command line needs: its help, its flag names, its choices. The
    command line is generated from these fields (``cli.config_flags``): one source for both."""
    return field(default=default, metadata={"help": help, "flags": flags, "choices": choices})


AUTO = "auto"
# the head's LR, and head LR / the top backbone group's LR: the config's defaults and every plan's
# LR_RATIO stays 10 (issue 25): at / 100 phase 2 opens where phase 1 ended (docs/concepts/opening.md),
# but it ended lower in every paired final-accuracy run at the user's settings (BENCHMARKS.md, "Phase 2's
# opening"): the lower LR is `--lr-ratio 100` and auto's `lr-ratio-100` challenger, not the default
LR, LR_RATIO = 1e-3, 10.0


def float_or_auto(value: Any) -> float | str:
    """A learning-rate setting: a number, or ``auto`` (found by ``thaw lr-find`` before training)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    return float(value)


float_or_auto.__name__ = "number or auto"  # argparse: "invalid number or auto value: 'x'"


BN_POLICIES = ("frozen", "tracked", "train", "matched", "fastai")
"""How batch-norm layers behave while training:

- ``frozen``: every backbone BN layer stays in eval mode in both phases; running statistics never change,
  and BN affine parameters train only where their layer group is unfrozen. This is the Keras guide's
  advice, and thaw's default before ``matched``: the weights under a held BN layer move, its input's mean
  and spread with them, and the fixed statistics amplify the shift (phase 2's first-epoch fall,
  docs/concepts/opening.md).
- ``tracked``: as ``frozen``, but before every validation each BN layer above the first trained group has
  its statistics moved by as much as its input moved since the phase began, so its output on calibration
  images keeps the mean and spread it had then (``thaw.train.tracked``): phase 2 opens where phase 1
  ended.
- ``train``: BN layers in unfrozen groups use batch statistics and update running statistics (plain
  PyTorch behaviour); BN layers in frozen groups stay in eval mode.
- ``matched`` (default): as ``train``, but each BN layer that trains first takes its input's statistics on
  training batches into its affine parameters, so that it computes phase 1's features at the start
  (``thaw.train.tracked.MatchedStatistics``), and before every validation its running statistics are
  measured at the current weights on ``bn_precise_batches`` training batches instead of left as the moving
  average (``thaw.train.tracked.precise``). On batches of fewer than 8 images (:data:`MATCHED_MIN_BATCH`)
  it is held as ``frozen`` (``thaw.train.preflight.batchnorm_for``).
- ``fastai``: BN layers are always in train mode and their affine parameters always trainable, even in
  frozen groups (fastai's ``train_bn=True``).
"""
HEAD_AT = ("backbone", "lr")
"""The head's LR in a phase that trains backbone groups (``--phase2-head-lr``, ``PhasePlan.head_at``): the
topmost trained group's, ``lr / lr_ratio``, or its own ``lr``."""
BN_PRECISE_BATCHES = 8  # training batches ``matched`` measures its statistics on before each validation
BN_HELD = ("frozen", "tracked")  # the policies with every backbone BN in eval mode
MATCHED_MIN_BATCH = 8
"""``matched`` trains batch norm on batches of this many images or more (per process); on fewer it is held
as ``frozen``. Batch statistics of a few images are noise: batch norm's error rises steeply below 8 per
batch (Wu & He 2018, ResNet-50 on ImageNet: 23.6% at 32, 24.8% at 8, 27.3% at 4, 34.7% at 2), and a
phase-2 LR sweep at batch 4 diverged from its first steps, where the held policy's did not."""


def bn_min_batch(policy: str) -> int:
    """The fewest images per batch (per process) a policy trains batch norm on: 1 where it holds batch
    norm, :data:`MATCHED_MIN_BATCH` for ``matched``, 2 for ``train`` and ``fastai`` (one image has no
    spread)."""
    return 1 if policy in BN_HELD else MATCHED_MIN_BATCH if policy == "matched" else 2


def batchnorm_policy(policy: str, batch_size: int) -> str:
    """The policy a phase trains with: ``matched`` on batches below :data:`MATCHED_MIN_BATCH` is held."""
    return "frozen" if policy == "matched" and batch_size < bn_min_batch(policy) else policy


DATA_FORMATS = ("auto", "split-folders", "folder", "csv", "npz", "shards", "litdata")
IN_CHANNELS = ("replicate", "sum")
SCHEDULES = ("constant", "cosine")
LOGGERS = ("none", "csv", "tensorboard", "mlflow", "wandb")
NORMALIZE = ("imagenet", "dataset")
BALANCE = ("none", "loss", "sampler")
MONITORS = ("val_loss", "val_auc", "val_balanced_accuracy", "val_f1")
ACCELERATORS = ("auto", "cpu", "gpu", "mps")
PRECISIONS = ("32", "16-mixed", "bf16-mixed")
DIST_STRATEGIES = ("auto", "ddp", "fsdp")
IMAGE_STORES = ("auto", "memory", "disk", "stream")
SHIFTS = ("none", "corruptions")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they become batches."""

    path: str = setting(
        "", "images: class folders, train/ val/ [test/] folders, a .csv, a .npz or builtin:digits"
    )
    format: str = setting("auto", "data layout; auto detects it from the path", choices=DATA_FORMATS)
    val_fraction: float = setting(0.15, "share of images for validation when thaw makes the split")
    test_fraction: float = setting(0.15, "share of images for test when thaw makes the split")
    split_file: str | None = setting(None, "reuse the split.csv of an earlier run")
    split_seed: int = setting(0, "seed of the split thaw makes; --seed varies training, not the split")
    image_size: int | None = setting(None, "input size in pixels; none: the weights' own, e.g. 224")
    batch_size: int = setting(32, "images per batch")
    augment: str = setting(
        "auto",
        "training augmentation: auto (standard, checked on your data before fine-tuning: a crop or flip "
        "that costs the solved head too much is weakened or dropped), none, light, standard, strong, or "
        "a list such as crop:0.6,hflip,rot90,color (--no-augment = none)",
    )
    hflip: bool = setting(
        True, "random horizontal flips (turn off for text, digits)", flags=("--hflip", "--flip")
    )
    crop_scale_min: float = setting(0.5, "smallest area share of a random resized crop")
    strict_images: bool = setting(False, "stop on an undecodable image instead of skipping it")
    trust_pickle: bool = setting(
        False,
        "read a LitData dataset whose fields LitData unpickles (this runs code stored in the dataset: only "
        "for a dataset you made yourself)",
    )
    labels_per_class: int | None = setting(
        None, "label budget: train on K labelled images per class (the rest of train: unlabelled)"
    )
    label_fraction: float | None = setting(
        None, "label budget: train on this share of each class's training labels, e.g. 0.25"
    )
    label_seed: int | None = setting(None, "seed of the labelled subset; none: the run's --seed")
    unlabeled: str | None = setting(
        None, "a folder of unlabelled images for --pseudo-labels (default: the budget's unlabelled images)"
    )
    normalize: str = setting(
        "imagenet",
        "input statistics: the pretrained weights' own (imagenet) or per channel from the training images",
        choices=NORMALIZE,
    )
    dicom_window: str | None = setting(
        None, "DICOM: a display window CENTER,WIDTH (after rescale slope/intercept), e.g. 40,400"
    )
    num_workers: int = setting(
        0, "worker processes that decode and augment images", flags=("--num-workers", "--workers")
    )
    image_store: str = setting(
        "auto",
        "decoded images: memory = all in RAM; disk = a uint8 cache file read image by image (flat memory); "
        "stream = decoded again at every use, from the files or shards (flat memory, no local copy); "
        "auto = disk when they would take more than --disk-above-mb",
        choices=IMAGE_STORES,
    )
    disk_above_mb: int = setting(4096, "image_store auto: keep decoded images on disk above this many MB")

    def validate(self) -> None:
        if self.format not in DATA_FORMATS:
            raise ThawError(f"data format {self.format!r} is not one of {', '.join(DATA_FORMATS)}")
        parse_augment(self.augment, self.crop_scale_min, self.hflip)
        if self.normalize not in NORMALIZE:
            raise ThawError(f"--normalize {self.normalize!r} is not one of {', '.join(NORMALIZE)}")
        if self.dicom_window is not None:
            dicom_window(self.dicom_window)
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
        if self.split_seed < 0:
            raise ThawError(f"--split-seed {self.split_seed} must be 0 or more")
        if not 0 <= self.num_workers <= 256:
            raise ThawError(f"--workers {self.num_workers} must be 0 (load in the main process) to 256")
        if self.batch_size > 65536:
            raise ThawError(f"--batch-size {self.batch_size} is too large: use 1 to 65536, e.g. 32")
        if self.split_seed >= 2**32:
            raise ThawError(f"--split-seed {self.split_seed} must be below 2**32")
        if self.image_store not in IMAGE_STORES:
            raise ThawError(f"--image-store {self.image_store!r} is not one of {', '.join(IMAGE_STORES)}")
        if self.disk_above_mb < 0:
            raise ThawError(f"--disk-above-mb {self.disk_above_mb} must be 0 or more, e.g. 4096")
        if self.labels_per_class is not None and self.label_fraction is not None:
            raise ThawError("--labels-per-class and --label-fraction are two budgets; give one of them")
        if self.labels_per_class is not None and self.labels_per_class < 1:
            raise ThawError(f"--labels-per-class {self.labels_per_class} must be at least 1")
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ThawError(f"--label-fraction {self.label_fraction} must be in (0, 1], e.g. 0.25")
        if self.label_seed is not None and not 0 <= self.label_seed < 2**32:
            raise ThawError(f"--label-seed {self.label_seed} must be 0 or more and below 2**32")


@dataclass(frozen=True)
class HardwareConfig:
    """Where and how the training runs: Lightning's accelerator, devices, nodes, precision and
    distributed strategy, and PyTorch's compiler and memory layout. ``batch_size`` is per device."""

    accelerator: str = setting("auto", "auto, cpu, gpu (CUDA) or mps (Apple)", choices=ACCELERATORS)
    devices: int = setting(1, "devices per node: GPUs, or processes on --accelerator cpu")
    num_nodes: int = setting(1, "machines (launch with torchrun or SLURM)")
    precision: str = setting("32", "32, 16-mixed (GPU) or bf16-mixed", choices=PRECISIONS)
    dist_strategy: str = setting(
        "auto",
        "how several devices share the work (Lightning's strategy; not --strategy, the fine-tuning "
        "recipe): auto = ddp for several devices, ddp, fsdp (GPU)",
        choices=DIST_STRATEGIES,
    )
    compile: bool = setting(False, "torch.compile the model for training")
    channels_last: bool = setting(
        True,
        "channels-last memory layout for the model and its image batches (default on: 1.13-1.46x faster "
        "training on a 2-core CPU, bench/compile.py; --no-channels-last for the contiguous layout)",
    )

    def validate(self) -> None:
        for name, value in (("accelerator", self.accelerator), ("precision", self.precision)):
            allowed = ACCELERATORS if name == "accelerator" else PRECISIONS
            if value not in allowed:
                raise ThawError(f"--{name} {value!r} is not one of {', '.join(allowed)}")
        if self.dist_strategy not in DIST_STRATEGIES:
            raise ThawError(
                f"--dist-strategy {self.dist_strategy!r} is not one of {', '.join(DIST_STRATEGIES)}"
            )
        if not 1 <= self.devices <= 1024:
            raise ThawError(f"--devices {self.devices} must be 1 or more, e.g. 2")
        if not 1 <= self.num_nodes <= 4096:
            raise ThawError(f"--num-nodes {self.num_nodes} must be 1 or more")


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained backbone, with which weights, and the new head."""

    name: str = setting(
        "mobilenet_v2",
        "torchvision name (mobilenet_v2, resnet50, vit_b_16, ...) or timm/<name>",
        flags=("--model",),
    )
    weights: str = setting(
        "DEFAULT", "DEFAULT, a weights name (IMAGENET1K_V1), a timm tag, a file path, or none"
    )
    dropout: float = setting(0.2, "dropout before the new linear head")
    in_channels: str = setting(
        "replicate",
        "greyscale: replicate to 3 channels or sum the first conv's RGB filters",
        choices=IN_CHANNELS,
    )

    def validate(self) -> None:
        if not self.name:
            raise ThawError("--model is empty: give a name such as mobilenet_v2, resnet18 or timm/resnet18")
        if not 0.0 <= self.dropout < 1.0:
            raise ThawError(f"head dropout {self.dropout} must be in [0, 1)")
        if self.in_channels not in IN_CHANNELS:
            raise ThawError(f"in_channels {self.in_channels!r} is not one of {', '.join(IN_CHANNELS)}")


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of training. ``epochs`` is a maximum: early stopping on validation loss ends it sooner.

    A setting left out (None) is the phase's own default (:data:`PHASE_DEFAULTS`), filled in by
    :class:`RunConfig`: ``RunConfig(phase2=PhaseConfig(epochs=2))`` keeps phase 2's warmup of 1 epoch and
    its cosine schedule, as ``thaw fit --phase2-epochs 2`` and a ``phase2: {epochs: 2}`` YAML block do."""

    epochs: int = setting(None, "at most this many epochs; 0 skips the phase")
    patience: int = setting(None, "early stopping: epochs without a lower validation loss")
    warmup_epochs: float = setting(None, "linear LR warmup, in epochs")
    weight_decay: float = setting(None, "AdamW weight decay (none on biases, norms, tokens)")
    schedule: str = setting(None, "LR schedule after warmup", choices=SCHEDULES)
    head_warmup_epochs: float = setting(
        None, "the head's own linear LR warmup, in epochs, where longer than the phase's (0: the phase's)"
    )

    def validate(self, phase: str) -> None:
        missing = [f.name for f in fields(self) if getattr(self, f.name) is None]
        if missing:
            raise ThawError(f"{phase}: {', '.join(missing)} not set; a RunConfig fills in a phase's defaults")
        if self.epochs < 0:
            raise ThawError(f"--{phase}-epochs {self.epochs} must be 0 (skip the phase) or more")
        if self.patience < 1:
            raise ThawError(f"{phase} patience {self.patience} must be at least 1")
        if not self.warmup_epochs >= 0:
            raise ThawError(f"--{phase}-warmup-epochs {self.warmup_epochs} must be 0 or more, e.g. 1")
        if not self.head_warmup_epochs >= 0:
            raise ThawError(
                f"--{phase}-head-warmup-epochs {self.head_warmup_epochs} must be 0 or more, e.g. 1"
            )
        if self.schedule not in SCHEDULES:
            raise ThawError(f"{phase} schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        if not self.weight_decay >= 0:
            raise ThawError(f"--{phase}-weight-decay {self.weight_decay} must be 0 or more, e.g. 0.01")

    def filled(self, defaults: dict[str, Any]) -> PhaseConfig:
        """This phase with every setting left out (None) taken from ``defaults``."""
        missing = {f.name: defaults[f.name] for f in fields(self) if getattr(self, f.name) is None}
        return dataclasses.replace(self, **missing) if missing else self


PHASE_DEFAULTS = {
    "phase1": dict(
        epochs=15,
        patience=3,
        warmup_epochs=0.0,
        weight_decay=0.01,
        schedule="constant",
        head_warmup_epochs=0.0,
    ),
    "phase2": dict(
        epochs=10, patience=3, warmup_epochs=1.0, weight_decay=0.01, schedule="cosine", head_warmup_epochs=0.0
    ),
}
"""Each phase's defaults: what a :class:`PhaseConfig` setting left out (None) becomes in a RunConfig."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. ``lr`` is the head's learning rate in phase 1; in phase 2 the backbone
    trains at ``lr / lr_ratio``, and the head with it (``phase2_head_lr``)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    phase1: PhaseConfig = field(
        default_factory=PhaseConfig,
        metadata={"help": "phase 1, feature extraction: the backbone frozen, a new head"},
    )
    phase2: PhaseConfig = field(
        default_factory=PhaseConfig,
        metadata={"help": "phase 2, fine-tuning: unfrozen layer groups, the backbone at lr / lr_ratio"},
    )
    strategy: str = setting(
        "two-phase",
        "the list of phase plans to run (`thaw strategies` lists them); auto: a search over candidate "
        "recipes within --time-budget (thaw.studies.auto)",
    )
    plans: list | None = setting(
        None,
        "the phase plans to run, as data (a list of PhasePlan settings; thaw fit --plans FILE): they replace "
        "the strategy's",
    )
    time_budget: float | None = setting(
        None,
        "--strategy auto: seconds of wall time for the whole search, the default recipe's own run "
        "included; none: twice that run's time",
    )
    layer_decay: float = setting(0.75, "discriminative: LR factor per layer group below the top one")
    gradual_every: int = setting(2, "gradual: epochs before one more layer group thaws")
    gradual_groups: int = setting(3, "gradual: thaw the top 1..N groups one by one, then all of them")
    l2_sp: float = setting(0.01, "l2-sp: strength of the pull toward the pretrained weights")
    shift: str = setting(
        "none", "also test on corrupted copies of the test images (ImageNet-C style)", choices=SHIFTS
    )
    ood: str | None = setting(
        None, "also test on this labelled folder (the same classes): out of distribution"
    )
    phase1_features: str = setting(
        "cached",
        "phase 1: cached = backbone features computed once, head solved to convergence; online = epochs",
        flags=("--phase1",),
        choices=("cached", "online"),
    )
    cache_views: int = setting(1, "phase 1 cached: augmented views per training image (1 = none)")
    lr: float | str = setting(
        LR, "head learning rate in every phase; auto: thaw lr-find's phase-1 suggestion, found first"
    )
    lr_ratio: float | str = setting(
        LR_RATIO, "phase 2: backbone LR = lr / lr_ratio; auto: from thaw lr-find --phase 2, found first"
    )
    phase2_head_lr: str = setting(
        "backbone",
        "phase 2: the solved head's LR: backbone = lr / lr_ratio, with the backbone (phase 2 opens where "
        "phase 1 ended, docs/concepts/opening.md); lr = the head's own lr, as in phase 1",
        choices=HEAD_AT,
    )
    unfreeze: str = setting("all", "phase 2: 'all' layer groups or the last N")
    optimizer: str = setting(
        "adamw",
        "trained phases' optimizer: adamw (decoupled weight decay), or sgd (momentum 0.9, Nesterov; "
        "usually wants a 10x higher --lr)",
        choices=OPTIMIZERS,
    )
    phase2_features: str = setting(
        "online",
        "phase 2 with --unfreeze N: cached = the frozen layers before the last N run once, their "
        "activations cached; online = every step",
        flags=("--phase2",),
        choices=("cached", "online"),
    )
    prefix_views: int = setting(1, "phase 2 cached: augmented views per training image (1 = none)")
    bn_policy: str = setting(
        "matched",
        "batch norm while training: matched = trains in the trained groups, from phase 1's features; "
        "frozen = held on its pretrained statistics (docs/concepts/opening.md)",
        choices=BN_POLICIES,
    )
    bn_precise_batches: int = setting(
        BN_PRECISE_BATCHES,
        "matched: before each validation, measure batch norm's statistics on this many training batches "
        "at the current weights (0: the moving average training leaves)",
    )
    label_smoothing: float = setting(0.0, "label smoothing of the training loss")
    seed: int = setting(0, "random seed for initialisation, batches and augmentation")
    adabn: bool = setting(
        False, "AdaBN: re-estimate batch-norm statistics on target-domain images before phase 1"
    )
    adabn_data: str | None = setting(
        None, "AdaBN's images: a folder (unlabelled); none: every training image, labelled or not"
    )
    pseudo_labels: bool = setting(
        False, "after the recipe, add confident predictions on unlabelled images as labels, fine-tune again"
    )
    pseudo_threshold: float = setting(0.9, "pseudo-labels: the lowest predicted probability kept")
    out: str | None = setting(None, "run folder (default runs/<data>-<model>-<time>); never overwritten")
    balance: str = setting(
        "none",
        "class imbalance: class-weighted loss, a class-balanced sampler (seeded per epoch), or none",
        choices=BALANCE,
    )
    monitor: str = setting(
        "val_loss",
        "validation metric for early stopping and each phase's best epoch; the phase kept has the best "
        "validation accuracy (val_loss) or this metric (the others)",
        choices=MONITORS,
    )
    target_sensitivity: float | None = setting(
        None, "binary tasks: the threshold reaching this validation sensitivity; none: Youden's J"
    )
    tta: bool = setting(False, "final val/test metrics (and the threshold) averaged over flips and crops")
    hardware: HardwareConfig = field(
        default_factory=HardwareConfig,
        metadata={"help": "devices, precision and distributed training (docs/how-to/multi-gpu.md)"},
    )
    logger: str = setting(
        "none",
        "also log the run to a Lightning logger: csv, tensorboard under RUN/logs/; mlflow, wandb as one "
        "tracking run where MLFLOW_TRACKING_URI or WANDB_PROJECT/WANDB_MODE say, with the config, the final "
        "metrics, the report and the model (the run folder's own files stay the source of truth)",
        choices=LOGGERS,
    )

    def __post_init__(self) -> None:
        # a phase's settings left out are that phase's defaults (frozen: set once, here, never after)
        for phase, defaults in PHASE_DEFAULTS.items():
            if isinstance(getattr(self, phase), PhaseConfig):
                object.__setattr__(self, phase, getattr(self, phase).filled(defaults))

    def validate(self) -> RunConfig:
        for key, value in _numbers(self):
            if isinstance(value, float) and not math.isfinite(value):
                flag = "--" + key.replace(".", "-").replace("_", "-").removeprefix("data-").removeprefix(
                    "model-"
                )
                raise ThawError(f"{key} = {value} is not a finite number; give a real value ({flag})")
        self.data.validate()
        self.model.validate()
        self.hardware.validate()
        self.phase1.validate("phase1")
        self.phase2.validate("phase2")
        if self.phase1.epochs == 0 and self.phase2.epochs == 0:
            raise ThawError("--phase1-epochs and --phase2-epochs are both 0: nothing to train")
        if self.lr != AUTO and not 0 < self.lr <= 1:
            raise ThawError(f"--lr {self.lr} must be in (0, 1] or auto; 1e-3 is a good start for AdamW")
        if self.lr_ratio != AUTO and not self.lr_ratio >= 1:
            raise ThawError(
                f"--lr-ratio {self.lr_ratio} must be >= 1 or auto (backbone LR = head LR / ratio)"
            )
        unfreeze_groups(self.unfreeze)
        if self.phase2_head_lr not in HEAD_AT:
            raise ThawError(f"--phase2-head-lr {self.phase2_head_lr!r} is not one of {', '.join(HEAD_AT)}")
        if self.bn_policy not in BN_POLICIES:
            raise ThawError(f"--bn-policy {self.bn_policy!r} is not one of {', '.join(BN_POLICIES)}")
        if not 0 <= self.bn_precise_batches <= 100_000:
            raise ThawError(
                f"--bn-precise-batches {self.bn_precise_batches} must be 0 (the moving average) or more, "
                "e.g. 8"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ThawError(f"label_smoothing {self.label_smoothing} must be in [0, 1)")
        self._validate_plans()
        if self.time_budget is not None and not self.time_budget > 0:
            raise ThawError(f"--time-budget {self.time_budget} must be a number of seconds above 0, e.g. 600")
        if self.time_budget is not None and self.strategy != AUTO:
            raise ThawError(
                f"--time-budget is the search budget of --strategy auto, not of {self.strategy}; add "
                f"--strategy auto or drop --time-budget"
            )
        if not 0 <= self.seed < 2**32:
            raise ThawError(f"--seed {self.seed} must be 0 or more and below 2**32")
        if not 0 < self.layer_decay <= 1:
            raise ThawError(f"--layer-decay {self.layer_decay} must be in (0, 1]; 1 = no decay, e.g. 0.75")
        if self.gradual_every < 1 or self.gradual_groups < 1:
            raise ThawError("--gradual-every and --gradual-groups must be at least 1, e.g. 2 and 3")
        if not self.l2_sp >= 0:
            raise ThawError(f"--l2-sp {self.l2_sp} must be 0 or more, e.g. 0.01")
        if self.shift not in SHIFTS:
            raise ThawError(f"--shift {self.shift!r} is not one of {', '.join(SHIFTS)}")
        if self.logger not in LOGGERS:
            raise ThawError(f"--logger {self.logger!r} is not one of {', '.join(LOGGERS)}")
        if self.adabn_data and not self.adabn:
            raise ThawError("--adabn-data gives AdaBN's images; add --adabn to use them (or drop it)")
        if self.data.unlabeled and not self.pseudo_labels:
            raise ThawError("--unlabeled gives pseudo-labelling's images; add --pseudo-labels (or drop it)")
        if not 0 < self.pseudo_threshold < 1:
            raise ThawError(f"--pseudo-threshold {self.pseudo_threshold} must be in (0, 1), e.g. 0.9")
        if self.balance not in BALANCE:
            raise ThawError(f"--balance {self.balance!r} is not one of {', '.join(BALANCE)}")
        if self.optimizer not in OPTIMIZERS:
            raise ThawError(f"--optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.monitor not in MONITORS:
            raise ThawError(f"--monitor {self.monitor!r} is not one of {', '.join(MONITORS)}")
        if self.target_sensitivity is not None and not 0 < self.target_sensitivity <= 1:
            raise ThawError(f"--target-sensitivity {self.target_sensitivity} must be in (0, 1], e.g. 0.95")
        return self

    def _validate_plans(self) -> None:
        """``plans`` is a list of mappings (each plan's own checks: ``strategies.plans_from``)."""
        if self.plans is None:
            return
        if not isinstance(self.plans, list) or not all(isinstance(p, dict) for p in self.plans):
            raise ThawError("plans must be a list of plans, each a mapping of plan settings (name, train...)")
        if self.strategy == AUTO or self.auto:
            what = "--strategy auto" if self.strategy == AUTO else f"{' and '.join(self.auto)} auto"
            raise ThawError(f"{what} is for a named strategy; plans given as data carry their own LRs")

    @property
    def auto(self) -> tuple[str, ...]:
        """The settings given as ``auto``: ``lr``, ``lr_ratio``."""
        return tuple(key for key in ("lr", "lr_ratio") if getattr(self, key) == AUTO)

    def resolved(self, found: dict[str, float] | None = None) -> RunConfig:
        """``lr`` and ``lr_ratio`` as numbers, the one place ``auto`` becomes one: each setting given as
        ``auto`` takes what thaw lr-find found for it (``found``, by ``thaw.train.resolve``). Without
        ``found`` (the finder has not run yet), the defaults stand in: to build and check the plans before
        anything is found. A run records the resolved config (``config.yaml``) and what the finder found
        (``lr_find.json``), so ``auto`` never reaches the plans or the engine."""
        numbers = {"lr": LR, "lr_ratio": LR_RATIO} if found is None else found
        missing = [key for key in self.auto if key not in numbers]
        if missing:
            raise ThawError(f"{missing[0]} is auto and has not been found: thaw fit runs thaw lr-find first")
        return dataclasses.replace(self, **{key: numbers[key] for key in self.auto})

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
        raw = yaml_file.load_file(path, f"config file {path}") or {}
        if not isinstance(raw, dict):
            raise ThawError(f"config file {path} must hold a mapping (data:, model:, phase1:, ...)")
        return cls.from_dict(raw, source=str(path))


def _numbers(config: Any, prefix: str = ""):
    """(dotted key, value) for every setting of ``config``, nested sections included."""
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


def dicom_window(value: str) -> tuple[float, float]:
    """``"CENTER,WIDTH"`` -> (center, width), width > 0."""
    try:
        center, width = (float(v) for v in str(value).split(","))
    except ValueError:
        raise ThawError(f"--dicom-window {value!r} must be CENTER,WIDTH, e.g. 40,400") from None
    if not (math.isfinite(center) and math.isfinite(width) and width > 0):
        raise ThawError(f"--dicom-window {value!r}: the width must be a positive number, e.g. 40,400")
    return center, width


def unfreeze_groups(value: str | int) -> int | None:
    """``"all"`` -> None (every group); ``"N"`` -> the last N layer groups."""
    text = str(value).strip().lower()
    if text == "all":
        return None
    if text.isdecimal() and int(text) >= 1:  # isdigit() admits "²", which int() refuses
        return int(text)
    raise ThawError(f"--unfreeze {value!r} must be 'all' or a number of layer groups >= 1, e.g. --unfreeze 2")


def override(config: RunConfig, changes: dict[str, Any], keep_none: bool = False) -> RunConfig:
    """Apply dotted overrides such as ``{"data.batch_size": 16, "lr": 3e-4}``; ``None`` values are skipped
    unless ``keep_none`` (then they set the setting to None)."""
    raw = config.to_dict()
    for key, value in changes.items():
        if value is None and not keep_none:
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
        if cls is DataConfig and name == "augment" and isinstance(value, bool):
            value = "standard" if value else "none"  # a config.yaml from before --augment took a policy
        nested = {
            "DataConfig": DataConfig,
            "ModelConfig": ModelConfig,
            "PhaseConfig": PhaseConfig,
            "HardwareConfig": HardwareConfig,
        }.get(str(sub))
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
    if base == "float | str":  # a number or auto (a YAML 1e-3 arrives as a string)
        try:
            return float_or_auto(value)
        except (TypeError, ValueError):
            raise ThawError(f"{where} = {value!r} must be a number or auto") from None
    if value is None and optional:
        return None
    kinds = {"int": int, "float": (int, float), "bool": bool, "str": (str, int)}
    expected = kinds.get(base)
    if expected is None:
        return value
    if isinstance(value, bool) and base != "bool" or not isinstance(value, expected):
        raise ThawError(f"{where} = {value!r} must be of type {type_name}")
    return float(value) if base == "float" else str(value) if base == "str" else value


# ------------------------------------------------------------------------------ settings by flag name
# One mapping from names to settings, for both doors: ``thaw fit``'s flags (``cli.config_flags``) and
# ``thaw.fit``'s keywords (``phase2_epochs=3`` is ``--phase2-epochs 3``). Neither can name a setting the
# other cannot, and both resolve through :func:`apply_settings`.


def settings(config: RunConfig | None = None):
    """(section, dotted key, field, value) for every scalar setting of ``config`` (default: the defaults),
    sections in declaration order; the top-level settings are in section ``training``."""
    config = RunConfig() if config is None else config
    for f in fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            for sub in fields(value):
                yield f.name, f"{f.name}.{sub.name}", sub, getattr(value, sub.name)
        else:
            yield "training", f.name, f, value


def flag_names(section: str, f: dataclasses.Field) -> tuple[str, ...]:
    """A setting's flags: its own (``flags=``), else ``--phase2-epochs`` in a phase, ``--batch-size``
    elsewhere. None for a setting that is not a flag (the data path, plans, what thaw records)."""
    if f.metadata.get("recorded") or f.name in ("plans",) or section == "data" and f.name == "path":
        return ()
    dashed = f.name.replace("_", "-")
    own = f"--{section}-{dashed}" if section.startswith("phase") else f"--{dashed}"
    return f.metadata.get("flags") or (own,)


BOTH_PHASES = "patience"  # --patience / patience=: the early-stopping patience of both phases


def keywords() -> dict[str, str]:
    """keyword -> dotted key: each flag without its dashes (``phase2_epochs`` -> ``phase2.epochs``,
    ``model`` -> ``model.name``, aliases included), and ``patience`` (both phases)."""
    found = {BOTH_PHASES: BOTH_PHASES}
    for section, key, f, _ in settings():
        for flag in flag_names(section, f):
            found[flag.removeprefix("--").replace("-", "_")] = key
    return found


def apply_settings(base: RunConfig, changes: dict[str, Any]) -> RunConfig:
    """``base`` with ``changes`` (dotted keys; None sets an optional setting to none; ``patience`` sets
    both phases' unless one is given), validated: what ``thaw fit``'s flags and ``thaw.fit``'s keywords
    both resolve through, so the same settings give the same config."""
    changes = dict(changes)
    both = changes.pop(BOTH_PHASES, None)
    if both is not None:
        changes.setdefault("phase1.patience", both)
        changes.setdefault("phase2.patience", both)
    return override(base, changes, keep_none=True).validate()


def from_keywords(base: RunConfig, data: str | Path | None = None, **given: Any) -> RunConfig:
    """``base`` with keyword settings named as ``thaw fit``'s flags (``phase2_epochs=3``,
    ``strategy="lp-ft"``), checked like the flags: an unknown name or a value outside a setting's choices
    is one :class:`ThawError` naming it and the fix."""
    names, changes = keywords(), {}
    by_key = {key: (section, f) for section, key, f, _ in settings()}
    for name, value in given.items():
        key = names.get(name)
        if key is None:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ThawError(
                f"unknown setting {name}={value!r}: {hint}the settings are thaw fit's flags without dashes "
                f"(--phase2-epochs is phase2_epochs; thaw fit --help lists them)"
            )
        choices = by_key[key][1].metadata.get("choices") if key in by_key else None
        if choices and value not in choices:
            raise ThawError(f"{name}={value!r} is not one of {', '.join(choices)}")
        if key in changes:
            raise ThawError(f"{name} and another name for the same setting ({key}) are both given; keep one")
        changes[key] = str(value) if isinstance(value, Path) else value
    if data is not None:
        changes["data.path"] = str(data)
    return apply_settings(base, changes)
