"""The two-phase recipe. Phase 1: freeze the backbone, train the new head until validation loss stops
improving. Phase 2: restore the best head, unfreeze all (or the last N) layer groups and train again with
a fresh optimizer, the backbone at ``lr / lr_ratio``. Everything below ``fit`` is machinery."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from thaw import data as thaw_data
from thaw.config import RunConfig, override, unfreeze_groups
from thaw.evaluate import classification_metrics, plot_confusion, plot_curves, predict, write_metrics_csv
from thaw.freeze import last_groups, set_trainable
from thaw.models import Classifier, build_classifier, save_model
from thaw.train.module import EpochRecorder, PhaseModule, PhasePlan
from thaw.train.report import Reporter
from thaw.train.run_folder import RunFolder, default_out


@dataclass
class RunResult:
    path: Path
    summary: dict
    model: Classifier


def fit(config: RunConfig, sources: thaw_data.Sources | None = None, quiet: bool = False) -> RunResult:
    """Fine-tune a pretrained classifier with the two-phase recipe and write a run folder."""
    config.validate()
    quiet_lightning()
    report = Reporter(quiet)
    L.seed_everything(config.seed, workers=True, verbose=False)
    sources = sources or thaw_data.discover(config.data, config.seed)
    model = build_classifier(
        config.model, len(sources.class_names), sources.class_names, config.data.image_size
    )
    loaders = Loaders(sources, model, config, report)
    out = Path(config.out) if config.out else default_out(sources.name, config.model.name)
    config = override(config, {"out": str(out)})
    run = RunFolder(out)
    (run / "config.yaml").write_text(config.to_yaml())
    thaw_data.write_split(sources, run / "split.csv")
    report.start(config, sources, model, loaders)

    rows: list[dict] = []
    phases: dict[str, dict] = {}
    states: dict[str, dict] = {}
    if config.phase1.epochs:  # Phase 1, feature extraction: backbone frozen, fresh head
        plan = PhasePlan("phase1", [], config.lr, 0.0, config.phase1)
        phases["phase1"] = run_phase(model, plan, config, loaders, run, rows, report)
        states["phase1"] = copy.deepcopy(model.state_dict())
    if config.phase2.epochs:  # Phase 2, fine-tuning: unfreeze, new optimizer, backbone LR = lr / lr_ratio
        groups = last_groups(model, unfreeze_groups(config.unfreeze))
        plan = PhasePlan("phase2", groups, config.lr, config.lr / config.lr_ratio, config.phase2)
        phases["phase2"] = run_phase(model, plan, config, loaders, run, rows, report)
        states["phase2"] = model.state_dict()

    final = choose_final(phases)
    model.load_state_dict(states[final])
    summary = {
        "dataset": sources.name,
        "model": config.model.name,
        "classes": sources.class_names,
        "images": {s: len(d.images) for s, d in loaders.decoded.items()},
        **phases,
        "final_phase": final,
        "gain": gain(phases),
    }
    plot_curves(rows, run / "curves.png", f"{sources.name} - {config.model.name}")
    final_eval = phases[final].get("test") or phases[final]["val"]
    plot_confusion(
        final_eval["confusion"],
        sources.class_names,
        run / "confusion.png",
        f"{final} on {'test' if 'test' in phases[final] else 'val'}",
    )
    save_model(model.eval(), run / "model.safetensors")
    run.write_json("summary.json", summary)
    path = run.commit()
    report.finish(summary, path)
    return RunResult(path, summary, model)


def run_phase(
    model: Classifier,
    plan: PhasePlan,
    config: RunConfig,
    loaders: Loaders,
    run: RunFolder,
    rows: list[dict],
    report: Reporter,
) -> dict:
    """Train one phase with early stopping on validation loss; end on its best epoch's weights."""
    set_trainable(model, plan.groups, config.bn_policy)

    def on_row(row: dict) -> None:  # metrics.csv grows epoch by epoch: a crashed run keeps its history
        report.epoch(row)
        write_metrics_csv(rows, run / "metrics.csv")

    module = PhaseModule(model, plan, config.bn_policy, config.label_smoothing)
    report.phase_start(plan, model)
    checkpoint = ModelCheckpoint(
        dirpath=run / "checkpoints",
        filename=f"{plan.name}-best",
        monitor="val_loss",
        mode="min",
        save_weights_only=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        max_epochs=plan.config.epochs,
        callbacks=[
            EarlyStopping(monitor="val_loss", mode="min", patience=plan.config.patience),
            checkpoint,
            EpochRecorder(plan.name, len(rows), rows, on_row),
        ],
        logger=False,
        deterministic=True,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=not report.quiet,
        default_root_dir=run.path,
        devices=1,
        log_every_n_steps=1,
    )
    start = time.perf_counter()
    trainer.fit(module, loaders.train, loaders.val)
    seconds = time.perf_counter() - start
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(best)
    model.cpu()
    mine = [r for r in rows if r["phase"] == plan.name]
    best_row = min(mine, key=lambda r: r["val_loss"])
    result = {
        "best_epoch": best_row["epoch"],
        "epochs_run": len(mine),
        "stopped_early": len(mine) < plan.config.epochs,
        "seconds": round(seconds, 1),
        "train_images_per_s": round(sum(r["train_images_per_s"] for r in mine) / len(mine), 1),
        "head_lr": plan.head_lr,
        "backbone_lr": plan.backbone_lr,
        "trainable_groups": f"{len(plan.groups)}/{len(model.layer_groups)}",
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "val": classification_metrics(*predict(model, loaders.val)),
    }
    if loaders.test is not None:
        result["test"] = classification_metrics(*predict(model, loaders.test))
    report.phase_end(plan, result)
    return result


class Loaders:
    """Decode once, then a shuffled augmented train loader and deterministic val/test loaders."""

    def __init__(self, sources: thaw_data.Sources, model: Classifier, config: RunConfig, report: Reporter):
        pre, channels = model.preprocessing, model.spec.in_channels
        self.decoded = thaw_data.decode_sources(
            sources, pre, channels, config.data.strict_images, report.warn
        )
        evaluation = thaw_data.eval_transform(pre)
        self.train = thaw_data.loader(
            self.decoded["train"],
            thaw_data.train_transform(pre, config.data),
            config.data,
            shuffle=True,
            seed=config.seed,
        )
        self.val = thaw_data.loader(self.decoded["val"], evaluation, config.data, shuffle=False)
        test = self.decoded.get("test")
        self.test = thaw_data.loader(test, evaluation, config.data, shuffle=False) if test else None


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


def choose_final(phases: dict[str, dict]) -> str:
    """Phase 2's weights, unless fine-tuning lowered validation accuracy: then phase 1's are kept."""
    if "phase2" in phases and "phase1" in phases:
        better = phases["phase2"]["val"]["accuracy"] >= phases["phase1"]["val"]["accuracy"]
        return "phase2" if better else "phase1"
    return next(iter(phases))


def gain(phases: dict[str, dict]) -> dict:
    """What phase 2 added over phase 1, per split and metric (positive = better)."""
    if "phase1" not in phases or "phase2" not in phases:
        return {}
    out = {}
    for split in ("val", "test"):
        if split in phases["phase1"] and split in phases["phase2"]:
            a, b = phases["phase1"][split], phases["phase2"][split]
            out[split] = {
                k: round(b[k] - a[k], 4) for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")
            }
    return out
