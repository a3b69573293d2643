"""The engine: run a strategy's phase plans in order, each from the best weights of the one before, and
keep the weights of the phase with the best validation accuracy. The default strategy is two plans
(``strategies.two_phase``): train a new head on the frozen backbone, then unfreeze and fine-tune with
the backbone at ``lr / lr_ratio``. Everything below ``fit`` and ``resume`` is machinery."""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from thaw import data as thaw_data
from thaw import multilabel
from thaw.augmentation import Policy
from thaw.augmentation import parse as parse_augment
from thaw.clinical import operating_point
from thaw.config import RunConfig, dicom_window, override
from thaw.data.budget import apply_budget, budget_record
from thaw.data.sources import label_gaps
from thaw.errors import ThawError
from thaw.evaluate import predict
from thaw.files import atomic_path, write_atomic, write_metrics_csv
from thaw.metrics.classification import classification_metrics
from thaw.models import Classifier, build_classifier, save_model
from thaw.models.state_dict import sha256
from thaw.reporting.html import write_report
from thaw.reporting.plots import plot_confusion, plot_curves, plot_reliability
from thaw.results import MONITORED, PhaseResult, RunSummary, choose_final, gains
from thaw.shift import evaluate_shift
from thaw.train import adapt, augment_check, distributed, lr_find, preflight
from thaw.train.forgetting import Probe, plot_drift
from thaw.train.guards import IncomingGuard, NonFiniteGuard
from thaw.train.loggers import check_logger, lightning_logger, logger_callbacks
from thaw.train.module import EpochRecorder, PhaseModule
from thaw.train.prefix import cached_prefix
from thaw.train.report import Reporter
from thaw.train.run_folder import FollowerRun, RunFolder, check_outside_data, default_out, final_path
from thaw.train.steps import cached_head, interpolate
from thaw.train.strategies import PhasePlan, check_plans, plans_for


@dataclass
class RunResult:
    path: Path
    summary: RunSummary
    model: Classifier


@dataclass
class Context:
    """What every step of a run shares: the config, the data, the run folder, the console, and the
    pretrained backbone parameters (the anchor of an ``l2-sp`` plan)."""

    config: RunConfig
    loaders: Loaders
    run: RunFolder
    report: Reporter
    anchor: dict[str, torch.Tensor]


def fit(
    config: RunConfig,
    sources: thaw_data.Sources | None = None,
    quiet: bool = False,
    plans: list[PhasePlan] | None = None,
) -> RunResult:
    """Fine-tune a pretrained classifier with ``plans`` (default: the config's strategy, ``two-phase``)
    and write a run folder. A run that is interrupted can be continued with :func:`resume`."""
    config.validate()
    check_logger(config.logger)
    distributed.check(config.hardware)
    quiet_lightning()
    distributed.start(config.hardware)  # several processes: from here on, each one runs this
    if config.auto and plans is not None:
        raise ThawError("lr or lr_ratio auto is found for the config's strategy: give plans with numbers")
    plans = check_plans(list(plans)) if plans is not None else plans_for(lr_find.placeholder(config))
    lr_find.check_auto(config, plans)
    given = [sources]
    report = Reporter(quiet or not distributed.is_zero())

    def create():  # rank 0 alone finds --lr auto, names, creates and fills the run folder
        sources = thaw_data.discover(config.data) if given[0] is None else given[0]
        multilabel.check_run(config, sources)  # settings with no multi-label meaning, refused here
        sources = given[0] = apply_budget(sources, config.data, config.seed)
        adapt.check_unlabelled(config, sources)
        preflight.check_run(config, plans, sources.class_names, sources.multilabel)  # before any folder
        out = Path(config.out) if config.out else default_out(sources.name, config.model.name)
        cfg, run_plans = override(config, {"out": str(out)}), plans
        if not cfg.auto:  # a config.yaml of an earlier --lr auto run, rerun with numbers
            cfg = override(cfg, {"lr_found": None, "lr_ratio_found": None}, keep_none=True)
        check_outside_data(out, cfg.data.path)
        found, files = {}, {}
        if cfg.auto:  # --lr auto: thaw lr-find first; config.yaml records auto and the value found
            with tempfile.TemporaryDirectory() as tmp:
                cfg, found = lr_find.resolve_auto(cfg, sources, Path(tmp), report.say, report.warn)
                run_plans = plans_for(cfg.resolved())
                files = {f.name: f.read_bytes() for f in Path(tmp).iterdir()}
        run = RunFolder.create(out)
        for name, data in files.items():  # the finders' plots and curves
            write_atomic(run / name, data)
        if found:
            run.write_json("lr_find.json", found)
        run.write_text("config.yaml", cfg.to_yaml())
        run.write_text("plans.yaml", yaml.safe_dump([p.to_dict() for p in run_plans], sort_keys=False))
        thaw_data.write_split(sources, run / "split.csv")
        return out, cfg, run_plans

    out, config, plans = distributed.on_zero(create)
    run = RunFolder(out) if distributed.is_zero() else FollowerRun(out)
    sources = given[0]
    if sources is None:  # the other ranks read the split rank 0 wrote: the same split everywhere
        sources = thaw_data.discover(override(config, {"data.split_file": str(run / "split.csv")}).data)
    return train(run, config, plans, sources, report)


def resume(path: str | Path, quiet: bool = False) -> RunResult:
    """Continue an interrupted run: finished phases are not rerun, the interrupted one goes on from its
    last epoch with its optimizer, schedule, early-stopping and RNG state."""
    staged = RunFolder(final_path(Path(path))).path
    config = RunConfig.from_yaml(staged / "config.yaml").validate() if staged.is_dir() else None
    if config is not None:
        distributed.check(config.hardware)
        quiet_lightning()
        distributed.start(config.hardware)
    run = distributed.on_zero(lambda: RunFolder.reopen(Path(path)))
    run = run if distributed.is_zero() else FollowerRun(run.final)
    config = RunConfig.from_yaml(run / "config.yaml").validate().resolved()
    plans = check_plans([PhasePlan.from_dict(p) for p in yaml.safe_load((run / "plans.yaml").read_text())])
    sources = thaw_data.discover(override(config, {"data.split_file": str(run / "split.csv")}).data)
    report = Reporter(quiet or not distributed.is_zero())
    report.say(f"resuming {run.path}")
    return train(run, config, plans, sources, report)


def train(
    run: RunFolder, config: RunConfig, plans: list[PhasePlan], sources: thaw_data.Sources, report: Reporter
) -> RunResult:
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    model = build_classifier(
        config.model,
        len(sources.class_names),
        sources.class_names,
        config.data.image_size,
        sources.multilabel,
    )
    with distributed.rank_zero_first():  # rank 0 fills the decoded-image store, the others read it
        loaders = Loaders(sources, model, config, report)
    probe = Probe.measure(model, loaders.decoded["val"])  # the pretrained side of the diagnostics
    ctx = Context(config, loaders, run, report, probe.start)  # the start is also l2-sp's anchor
    report.start(config, sources, model, loaders, plans)
    gaps = label_gaps(sources)  # multi-label: labels without a positive in train or val
    if gaps:
        report.warn(gaps)
    adabn = adapt.run_adabn(model, ctx) if config.adabn else None

    results: dict[str, PhaseResult] = {}
    augment = None
    for index, plan in enumerate(plans):  # each plan starts from the best weights of the one before
        if augment is None and augments(plan):  # before the first plan that fine-tunes the backbone
            augment = choose_augmentation(model, ctx, trained_head=bool(results))
        step = (
            interpolate
            if plan.interpolate_from
            else run_phase
            if plan.features == "online"
            else cached_head  # a frozen backbone: features once, the head solved
            if plan.train == "head"
            else cached_prefix  # a frozen prefix: its activations once, the suffix trained
        )
        results[plan.name] = run.finished_phase(plan.name) or step(model, plan, index, ctx, results)
        distributed.barrier()  # rank 0 has saved the plan's weights: every rank goes on from them
        model.load_state_dict(run.load_weights(plan.name))
    forgetting = {}
    for name in results:  # one forward over the probe images per plan
        model.load_state_dict(run.load_weights(name))
        forgetting[name] = probe.diagnose(model)
    final = choose_final(results, config.monitor)
    model.load_state_dict(run.load_weights(final))
    pseudo = None
    if config.pseudo_labels:  # one more round on labelled + confidently pseudo-labelled images
        result, pseudo = adapt.pseudo_round(model, len(plans), ctx, results, final)
        if result is not None:
            results[result.name] = result
            final = choose_final(results, config.monitor)
        model.load_state_dict(run.load_weights(final))
    operating, scored = operating_point(
        model, loaders.decoded, model.preprocessing, config.tta, config.target_sensitivity, config.seed
    )
    if operating.rule.startswith("argmax:"):  # a binary run with too few validation images of a class
        report.warn(f"no decision threshold chosen; {operating.rule}")
    shift = evaluate_shift(model, loaders.decoded, config, report.say)

    summary = RunSummary(
        dataset=sources.name,
        model=config.model.name,
        classes=sources.class_names,
        images={s: len(d.images) for s, d in loaders.decoded.items()},
        phases=results,
        final_phase=final,
        strategy=config.strategy,
        seed=config.seed,
        gain=gains(results),
        budget=budget_record(sources, config.data, config.seed),
        adabn=adabn,
        pseudo_labels=pseudo,
        operating=operating,
        hardware=hardware_summary(config, loaders),
        forgetting=forgetting,
        shift=shift,
        lr_find=json.loads((run / "lr_find.json").read_text()) if (run / "lr_find.json").is_file() else {},
        augment=augment
        or {
            "setting": config.data.augment,
            "chosen": loaders.policy.describe(),
            "chosen_spec": loaders.policy.spec(),
            "skipped": "no plan fine-tunes the backbone",
        },
        task=multilabel.TASK if sources.multilabel else multilabel.SINGLE,
        skipped_images=loaders.skipped,
    )
    if not distributed.is_zero():  # rank 0 writes the run folder
        return RunResult(run.final, summary, model)
    rows = [row for r in results.values() for row in r.epochs]
    write_metrics_csv(rows, run / "metrics.csv")  # also when no phase trained epochs (a cached solve alone)
    plot_curves(rows, run / "curves.png", f"{sources.name} - {config.model.name}")
    plot_drift(forgetting, run / "drift.png")
    split = "test" if summary.final.test is not None else "val"
    if not sources.multilabel:  # multi-label: per-label counts in summary.json (per_label) instead
        plot_confusion(
            summary.final.on(split).confusion,
            sources.class_names,
            run / "confusion.png",
            f"{final} on {split}",
        )
    plot_reliability(*scored[split], run / "reliability.png", f"{final} on {split}:")
    with atomic_path(run / "model.safetensors") as tmp:
        save_model(model.eval(), tmp)
    summary = dataclasses.replace(summary, model_sha256=sha256(run / "model.safetensors"))  # load checks it
    run.write_json("summary.json", summary.to_dict())
    write_report(run.path, warn=report.warn)  # report.html; a failure there is a warning, not a lost run
    path = run.commit()
    report.finish(summary, path)
    return RunResult(path, summary, model)


def augments(plan: PhasePlan) -> bool:
    """Whether ``plan`` fine-tunes backbone layers on augmented images: where augmentation that hides the
    label does its damage (a head trained online in phase 1 uses the policy as given, unchecked)."""
    return not plan.interpolate_from and plan.train != "head"


def choose_augmentation(model: Classifier, ctx: Context, trained_head: bool) -> dict:
    """``--augment auto``: the check of ``thaw.train.augment_check`` on the head the plans before solved,
    run once (rank 0; a resumed run reads ``augment.json``) and applied to every later plan; a given
    policy is used as it is. Returns the record for ``summary.json``."""
    config, loaders, run = ctx.config, ctx.loaders, ctx.run
    policy = loaders.policy
    saved = run / "augment.json"

    def decide() -> dict:
        if saved.is_file():
            return json.loads(saved.read_text())
        record = {"setting": config.data.augment, "chosen": policy.describe(), "chosen_spec": policy.spec()}
        if config.data.augment == "auto" and not policy.ops:
            record["skipped"] = "nothing to check"
        elif config.data.augment == "auto" and not trained_head:
            record["skipped"] = (
                "no head was solved before the first trained plan, so nothing can score the augmented views; "
                "the standard policy is used as it is"
            )
        elif config.data.augment == "auto":
            _, record = augment_check.check(
                model, policy, loaders.decoded["train"], config.seed, config.hardware.channels_last
            )
        run.write_json("augment.json", record)
        return record

    record = distributed.on_zero(decide)
    loaders.use(parse_augment(record["chosen_spec"]))  # an explicit list (or none): no preset to shape
    if record.get("setting") == "auto":
        ctx.report.augment(record, augment_check.line(record))
    return record


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
    validation loss or on the metric that picks the plan kept within ``patience`` epochs stops there
    (``guards.IncomingGuard``), instead of spending its whole budget on weights the run will not keep."""
    config, loaders, run, report = ctx.config, ctx.loaders, ctx.run, ctx.report
    feed = feed or Feed(loaders.train(index), loaders.val_shard)  # under DDP: this rank's shard
    earlier = [row for r in before.values() for row in r.epochs]

    def on_row(row: dict) -> None:  # metrics.csv grows epoch by epoch: a crashed run keeps its history
        report.epoch(row)
        if distributed.is_zero():
            write_metrics_csv(earlier + recorder.rows, run / "metrics.csv")

    anchor = ctx.anchor if plan.regularizer == "l2-sp" else None
    weights = loaders.class_weights if config.balance == "loss" else None
    hw = config.hardware
    module = PhaseModule(
        model, plan, config.seed, index, anchor, feed.forward, weights, hw.compile, hw.channels_last
    )
    monitor, mode = config.monitor, "min" if config.monitor == "val_loss" else "max"
    recorder = EpochRecorder(plan.name, len(earlier), on_row)
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints,
        filename=f"{plan.name}-best",
        monitor=monitor,
        mode=mode,
        save_last=True,
        enable_version_counter=False,
    )
    checkpoint.CHECKPOINT_NAME_LAST = f"{plan.name}-last"
    last = run.checkpoints / f"{plan.name}-last.ckpt"
    guard = NonFiniteGuard(plan.name, report.warn)  # a NaN/Inf loss ends the phase on its last good weights
    start = start or (list(before.values())[-1] if before else None)
    incoming = incoming_scores(start, monitor)
    gate = IncomingGuard(incoming, plan.patience) if incoming else None
    trainer = L.Trainer(
        max_epochs=plan.epochs,
        callbacks=[
            guard,
            *([gate] if gate else []),
            EarlyStopping(monitor=monitor, mode=mode, patience=plan.patience),
            checkpoint,
            recorder,
            *logger_callbacks(config.logger),
        ],
        plugins=[AtomicCheckpointIO()],
        logger=lightning_logger(config.logger, run.path, plan.name),
        num_sanity_val_steps=0,
        enable_model_summary=False,
        # a pipe or a log file gets the one line per epoch, not the progress bar's fragments
        enable_progress_bar=not report.quiet and sys.stdout.isatty(),
        default_root_dir=run.path,
        log_every_n_steps=1,
        **distributed.trainer_args(config.hardware),
    )
    report.phase_start(plan, model, resumed=last.is_file())
    if feed.note:
        report.say(f"  {feed.note}")
    state = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if state is not None and phase_over(state, plan):  # killed after its last epoch was saved
        recorder.load_state_dict(state["callbacks"][recorder.state_key])
        guard.load_state_dict(state["callbacks"].get(guard.state_key, {}))
        if gate is not None and gate.state_key in state["callbacks"]:
            gate.load_state_dict(state["callbacks"][gate.state_key])
    else:
        trainer.fit(module, feed.train, feed.val, ckpt_path=last if state is not None else None)
    best = torch.load(run.checkpoints / f"{plan.name}-best.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(best["state_dict"])
    model.cpu()
    rows = recorder.rows
    best_row = min(rows, key=lambda r: r[monitor] if mode == "min" else -r[monitor])
    n_groups = len(model.layer_groups)
    group_lrs = plan.group_lr(n_groups)
    result = PhaseResult(
        name=plan.name,
        best_epoch=best_row["epoch"],
        epochs_run=len(rows),
        stopped_early=len(rows) < plan.epochs,
        halted=guard.reason,
        seconds=round(sum(r["seconds"] for r in rows), 1),
        train_images_per_s=round(sum(r["train_images_per_s"] for r in rows) / len(rows), 1),
        head_lr=plan.lr,
        backbone_lr=max(group_lrs, default=0.0),
        group_lrs=group_lrs,
        trainable_groups=f"{len(module.groups)}/{n_groups}",
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        val=classification_metrics(*predict(model, loaders.val), names=model.class_names),
        test=classification_metrics(*predict(model, loaders.test), names=model.class_names)
        if loaders.test is not None
        else None,
        epochs=rows,
        features=feed.record,
        incoming=None
        if gate is None
        else {
            "plan": start.name,
            "scores": {k: round(v, 6) for k, v in incoming.items()},
            "beaten": gate.beaten,
            "stopped": gate.stopped,
        },
    )
    run.save_weights(plan.name, model)
    run.save_phase(result)  # from here on the plan counts as finished
    distributed.barrier()  # every rank has read the best checkpoint
    for stale in (last, run.checkpoints / f"{plan.name}-best.ckpt") if distributed.is_zero() else ():
        stale.unlink(missing_ok=True)
    report.phase_end(result)
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
            multilabel.pos_weight(train_labels)
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
        self.train_transform = thaw_data.train_transform(
            self.pre, self.config.data, policy, self.channels
        )

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
