"""One phase of a run: what every step shares (:class:`Context`), what a phase trains on (:class:`Feed`),
a plan trained by epochs with early stopping and exact resume (:func:`run_phase`), and the one function
that turns a finished phase into its :class:`PhaseResult` (:func:`finish_phase`). The engine that runs a
strategy's plans in order is ``thaw.train.engine``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from thaw import data as thaw_data
from thaw.core.augment_policy import Policy
from thaw.core.config import RunConfig, dicom_window
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_rows_csv
from thaw.core.results import MONITORED, PhaseResult
from thaw.core.run_folder import RunFolder
from thaw.core.run_log import Reporter
from thaw.core.strategies import PhasePlan
from thaw.metrics.classification import classification_metrics
from thaw.models import Classifier
from thaw.train import adapters, distributed
from thaw.train.guards import EarlyStoppingAfterWarmup, IncomingGuard, NonFiniteGuard, warmup_grace
from thaw.train.loggers import lightning_logger, logger_callbacks
from thaw.train.losses import pos_weight
from thaw.train.module import EpochRecorder, PhaseModule
from thaw.train.probabilities import probabilities
from thaw.train.tracked import MatchedStatistics, TrackedStatistics, calibration_images


@dataclass
class Context:
    """What every step of a run shares: the config, the data, the run folder, the console, and the
    pretrained backbone parameters (the anchor of an ``l2-sp`` plan)."""

    config: RunConfig
    loaders: Loaders
    run: RunFolder
    report: Reporter
    anchor: dict[str, torch.Tensor]
    augment: dict | None = None  # --augment: the record of the policy chosen, once a plan needed one


def incoming_scores(before: PhaseResult | None, monitor: str) -> dict[str, float]:
    """The validation loss of the weights a plan starts from, and the metric that picks the plan kept
    (``choose_final``: accuracy, or ``--monitor``'s), by the keys training logs them under."""
    if before is None:
        return {}
    key = "val_acc" if monitor == "val_loss" else monitor
    scores = {"val_loss": before.val.loss, key: getattr(before.val, MONITORED[monitor])}
    return {k: float(v) for k, v in scores.items() if v == v}


@dataclass
class Feed:
    """What a phase trains and validates on: image loaders (the default), or cached activations with the
    forward from them to logits (``thaw.train.prefix``); ``record`` goes to ``PhaseResult.features``."""

    train: object
    val: object
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # None: the whole model
    record: dict = field(default_factory=lambda: {"mode": "online"})
    note: str = ""  # said under the phase's heading


def run_phase(
    model: Classifier,
    plan: PhasePlan,
    index: int,
    ctx: Context,
    before: dict,
    feed: Feed | None = None,
    start: PhaseResult | None = None,
) -> PhaseResult:
    """Train one plan with early stopping on validation loss, from its last checkpoint if an earlier
    attempt was interrupted; end on its best epoch's weights, saved as ``checkpoints/<plan>.safetensors``.

    A plan that has not beaten the weights it starts from (``start``, default the plan before) on
    validation loss or on the metric that picks the plan kept, and whose trend over its last ``patience``
    epochs would not beat them within its budget, stops there (``guards.IncomingGuard``), instead of
    spending its whole budget on weights the run will not keep."""
    feed = feed or Feed(ctx.loaders.train(index), ctx.loaders.val_shard)  # under DDP: this rank's shard
    start = start or (list(before.values())[-1] if before else None)
    module = phase_module(model, plan, index, ctx, feed)
    watch = Watch.of(plan, ctx, [row for r in before.values() for row in r.epochs], start)
    trainer = phase_trainer(plan, ctx, watch, batchnorm_callbacks(plan, module, ctx))
    last = ctx.run.checkpoints / f"{plan.name}-last.ckpt"
    ctx.report.phase_start(plan, model, resumed=last.is_file())
    if feed.note:
        ctx.report.say(f"  {feed.note}")
    state = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if state is not None and phase_over(state, plan):  # killed after its last epoch was saved
        watch.restore(state["callbacks"])
    else:
        trainer.fit(module, feed.train, feed.val, ckpt_path=last if state is not None else None)
    best_path = ctx.run.checkpoints / f"{plan.name}-best.ckpt"
    module.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"])
    model.cpu()
    fields = watch.fields(plan, model, len(module.groups), feed)
    adapters.merge(model)  # LoRA / SSF folded into the weights: the plan's weights save as a plain model
    result = finish_phase(model, plan, ctx, **fields)
    distributed.barrier()  # every rank has read the best checkpoint
    for stale in (last, best_path) if distributed.is_zero() else ():
        stale.unlink(missing_ok=True)
    return result


def phase_module(model: Classifier, plan: PhasePlan, index: int, ctx: Context, feed: Feed) -> PhaseModule:
    """The Lightning module of one plan: its loss weights (``--balance loss``), its anchor (``l2-sp``)."""
    config, hw = ctx.config, ctx.config.hardware
    anchor = ctx.anchor if plan.regularizer == "l2-sp" else None
    weights = ctx.loaders.class_weights if config.balance == "loss" else None
    return PhaseModule(
        model, plan, config.seed, index, anchor, feed.forward, weights, hw.compile, hw.channels_last
    )


@dataclass
class Watch:
    """What watches a plan train: the epoch rows (``metrics.csv`` grows epoch by epoch), the non-finite
    guard, the gate against the weights it starts from, and the best and last checkpoints."""

    recorder: EpochRecorder
    guard: NonFiniteGuard
    gate: IncomingGuard | None
    checkpoint: ModelCheckpoint
    incoming: dict[str, float]
    start: PhaseResult | None

    @classmethod
    def of(cls, plan: PhasePlan, ctx: Context, earlier: list[dict], start: PhaseResult | None) -> Watch:
        report, run = ctx.report, ctx.run

        def on_row(row: dict) -> None:  # a crashed run keeps its history
            report.epoch(row)
            if distributed.is_zero():
                write_rows_csv(earlier + recorder.rows, run / "metrics.csv")

        recorder = EpochRecorder(plan.name, len(earlier), on_row)
        checkpoint = ModelCheckpoint(
            dirpath=run.checkpoints,
            filename=f"{plan.name}-best",
            monitor=ctx.config.monitor,
            mode=monitor_mode(ctx.config.monitor),
            save_last=True,
            enable_version_counter=False,
        )
        checkpoint.CHECKPOINT_NAME_LAST = f"{plan.name}-last"
        guard = NonFiniteGuard(plan.name, report.warn)  # a NaN/Inf loss ends the phase on its last good one
        incoming = incoming_scores(start, ctx.config.monitor)
        grace = warmup_grace(plan.warmup_epochs)
        gate = IncomingGuard(incoming, plan.patience, plan.epochs, grace) if incoming else None
        return cls(recorder, guard, gate, checkpoint, incoming, start)

    def callbacks(self) -> list:
        return [self.guard, *([self.gate] if self.gate else [])]

    def restore(self, states: dict) -> None:
        """A phase already over: its rows, guard and gate as its last checkpoint saved them."""
        self.recorder.load_state_dict(states[self.recorder.state_key])
        self.guard.load_state_dict(states.get(self.guard.state_key, {}))
        if self.gate is not None and self.gate.state_key in states:
            self.gate.load_state_dict(states[self.gate.state_key])

    def fields(self, plan: PhasePlan, model: Classifier, trainable: int, feed: Feed) -> dict:
        """The :class:`PhaseResult` fields of a phase trained by epochs, from its rows and its plan."""
        rows, monitor = self.recorder.rows, self.checkpoint.monitor
        sign = 1 if monitor_mode(monitor) == "min" else -1
        best_row = min(rows, key=lambda r: sign * r[monitor])
        group_lrs = plan.group_lr(len(model.layer_groups))
        gate, start = self.gate, self.start
        return {
            "best_epoch": best_row["epoch"],
            "epochs_run": len(rows),
            "stopped_early": len(rows) < plan.epochs,
            "halted": self.guard.reason,
            "seconds": round(sum(r["seconds"] for r in rows), 1),
            "train_images_per_s": round(sum(r["train_images_per_s"] for r in rows) / len(rows), 1),
            "head_lr": plan.head_lr(),
            "backbone_lr": max(group_lrs, default=0.0),
            "group_lrs": group_lrs,
            "trainable_groups": f"{trainable}/{len(model.layer_groups)}",
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "epochs": rows,
            "features": feed.record,
            "incoming": None
            if gate is None
            else {
                "plan": start.name,
                "scores": {k: round(v, 6) for k, v in self.incoming.items()},
                "beaten": gate.beaten,
                "stopped": gate.stopped,
            },
        }


def monitor_mode(monitor: str) -> str:
    return "min" if monitor == "val_loss" else "max"


def batchnorm_callbacks(plan: PhasePlan, module: PhaseModule, ctx: Context) -> list[L.Callback]:
    """``--bn-policy tracked``, for a plan that trains backbone weights under batch norm in eval mode;
    ``matched``, for one that trains batch norm."""
    if plan.bn_policy == "matched" and module.groups and MatchedStatistics.layers(module):
        return [MatchedStatistics(precise_batches=ctx.config.bn_precise_batches)]
    if plan.bn_policy != "tracked" or not module.groups or not TrackedStatistics.layers(module):
        return []
    evaluation = thaw_data.eval_transform(ctx.loaders.pre)
    train = thaw_data.loader(ctx.loaders.decoded["train"], evaluation, ctx.config.data, shuffle=False)
    return [TrackedStatistics(calibration_images(train.dataset, ctx.config.data.image_size))]


def phase_trainer(plan: PhasePlan, ctx: Context, watch: Watch, extra: list | None = None) -> L.Trainer:
    """A Lightning trainer for one plan: early stopping on ``--monitor``, atomic checkpoints, the logger;
    ``extra``: callbacks that act on the model before the others see an epoch (``--bn-policy tracked``)."""
    config, report, run = ctx.config, ctx.report, ctx.run
    monitor = config.monitor
    return L.Trainer(
        max_epochs=plan.epochs,
        callbacks=[
            *(extra or []),
            *watch.callbacks(),
            EarlyStoppingAfterWarmup(
                monitor=monitor,
                mode=monitor_mode(monitor),
                patience=plan.patience,
                grace=warmup_grace(plan.warmup_epochs),
            ),
            watch.checkpoint,
            watch.recorder,
            *logger_callbacks(config.logger),
        ],
        plugins=[AtomicCheckpointIO()],
        logger=lightning_logger(config.logger, run.path, plan.name),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=report.progress,  # a terminal or a notebook; not a pipe (core.run_log)
        default_root_dir=run.path,
        log_every_n_steps=1,
        **distributed.trainer_args(config.hardware),
    )


def finish_phase(
    model: Classifier, plan: PhasePlan, ctx: Context, val=None, test=None, **fields
) -> PhaseResult:
    """A finished phase as its :class:`PhaseResult`: the model as it is now scored on validation and test
    (unless ``val``/``test`` are given), its weights and record saved (from here on the plan counts as
    finished), and its line on the console. ``fields``: what the step measured."""
    loaders = ctx.loaders
    if val is None:
        val = classification_metrics(*probabilities(model, loaders.val), names=model.class_names)
        if loaders.test is not None:
            test = classification_metrics(*probabilities(model, loaders.test), names=model.class_names)
    result = PhaseResult(name=plan.name, val=val, test=test, **fields)
    ctx.run.save_weights(plan.name, model)
    ctx.run.save_phase(result)
    ctx.report.phase_end(result)
    return result


def phase_over(state: dict, plan: PhasePlan) -> bool:
    """A last checkpoint saved after the phase's final epoch: the budget spent or early stopping fired."""
    stopper = next((v for k, v in state["callbacks"].items() if k.startswith("EarlyStopping")), {})
    guard = next((v for k, v in state["callbacks"].items() if k.startswith("NonFiniteGuard")), {})
    halted = bool(guard.get("reason"))  # a non-finite loss stopped it
    gate = next((v for k, v in state["callbacks"].items() if k.startswith("IncomingGuard")), {})
    halted = halted or bool(gate.get("stopped"))  # it did not beat the weights it started from
    return state["epoch"] + 1 >= plan.epochs or stopper.get("stopped_epoch", 0) > 0 or halted


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning writes checkpoints in place; a kill mid-write would leave a truncated ``last.ckpt``."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(Path(path)) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


class Loaders:
    """Decode once, then a shuffled augmented train loader per phase and deterministic val/test loaders."""

    def __init__(self, sources: thaw_data.Sources, model: Classifier, config: RunConfig, report: Reporter):
        pre, channels = model.preprocessing, model.spec.in_channels
        self.config, self.sources = config, sources
        data = config.data
        window = dicom_window(data.dicom_window) if data.dicom_window else None
        n = sum(len(sources.split(s)) for s in ("train", "val", "test"))
        self.store = thaw_data.store.choose(data.image_store, n, pre, channels, data.disk_above_mb)
        self.decoded = thaw_data.decode_sources(
            sources, pre, channels, data.strict_images, report.warn, window, self.store, data.num_workers
        )
        kept = {key for d in self.decoded.values() for key in d.keys}  # undecodable images, skipped
        listed = [it.key for s in ("train", "val", "test") for it in sources.split(s)]
        self.skipped = [key for key in listed if key not in kept]
        if data.normalize == "dataset":  # the model file keeps these, so prediction uses them too
            mean, std = thaw_data.dataset_statistics(self.decoded["train"])
            pre = model.preprocessing = dataclasses.replace(pre, mean=mean, std=std)
            report.say(f"normalize: training-set statistics mean {mean}, std {std}")
        self.pre = pre  # what the transforms normalise with (the training set's statistics, if asked)
        train_labels = self.decoded["train"].labels
        self.class_weights = (  # --balance loss: per class, or per label the positives' weight
            pos_weight(train_labels)
            if sources.multilabel
            else thaw_data.class_weights(train_labels, len(sources.class_names))
        )
        self.rank, self.world = distributed.rank(), distributed.size()
        if len(self.decoded["val"].images) < self.world:
            raise ThawError(
                f"{len(self.decoded['val'].images)} validation images cannot be shared by {self.world} "
                f"processes; use fewer --devices or more validation images"
            )
        self.channels = channels
        self.use(thaw_data.policy_of(config.data))
        evaluation = thaw_data.eval_transform(pre)
        self.val = thaw_data.loader(self.decoded["val"], evaluation, config.data, shuffle=False)
        # under DDP each rank validates its shard; the metrics are summed over the ranks (PhaseModule)
        self.val_shard = thaw_data.loader(
            self.decoded["val"], evaluation, config.data, False, 0, self.rank, self.world
        )
        test = self.decoded.get("test")
        self.test = thaw_data.loader(test, evaluation, config.data, shuffle=False) if test else None

    def use(self, policy: Policy) -> None:
        """Train with augmentation ``policy`` from here on (``--augment auto``: what the check chose)."""
        self.policy = policy
        self.train_transform = thaw_data.train_transform(self.pre, self.config.data, policy, self.channels)

    def train(self, phase: int):
        """Phase ``phase``'s training batches: their order and augmentation depend on (seed, phase, epoch)."""
        data, seed = self.decoded["train"], self.train_seed(phase)
        balanced = self.config.balance == "sampler"
        data_config, transform = self.config.data, self.train_transform
        return thaw_data.loader(data, transform, data_config, True, seed, balanced, self.rank, self.world)

    def train_seed(self, phase: int) -> int:
        return self.config.seed * 1009 + phase


def hardware_summary(config: RunConfig, loaders: Loaders) -> dict:
    """Where the run trained, for summary.json: the settings as resolved on this machine."""
    hw = config.hardware
    return {
        "accelerator": distributed.accelerator(hw),
        "devices": hw.devices,
        "num_nodes": hw.num_nodes,
        "processes": distributed.size(),
        "precision": hw.precision,
        "dist_strategy": hw.dist_strategy,
        "compile": hw.compile,
        "channels_last": hw.channels_last,
        "workers": config.data.num_workers,
        "image_store": loaders.store,
        "machine": distributed.machine(),
    }


def quiet_lightning() -> None:
    """Lightning's banners (GPU available, tips, dataloader hints) say nothing about this run."""
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*exists and is not empty.*",
        ".*litlogger.*",
        ".*module\\(s\\) in eval mode at the start of training.*",
        ".*LeafSpec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)
