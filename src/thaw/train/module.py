"""The Lightning module for one phase, and the callback that records each epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn.functional as F

from thaw.config import PhaseConfig
from thaw.freeze import batchnorm_eval
from thaw.models import Classifier
from thaw.optim import param_groups, warmup_cosine


@dataclass(frozen=True)
class PhasePlan:
    """What one phase trains and how fast: the head always, plus the listed layer groups."""

    name: str
    groups: list[int]
    head_lr: float
    backbone_lr: float
    config: PhaseConfig


class PhaseModule(L.LightningModule):
    """Trains a :class:`Classifier` for one phase. A new module, and so a new optimizer and schedule
    built from exactly the trainable parameters, for every phase: no param groups added mid-run."""

    def __init__(self, model: Classifier, plan: PhasePlan, bn_policy: str, label_smoothing: float = 0.0):
        super().__init__()
        self.model = model
        self.plan = plan
        self.label_smoothing = label_smoothing
        # Modules that stay in eval mode while training. A fully frozen backbone (phase 1) runs entirely
        # in eval mode, dropout included, so its features are a fixed function of the image.
        if not plan.groups and bn_policy != "fastai":
            self._eval_modules = [model.backbone]
        else:
            self._eval_modules = batchnorm_eval(model, plan.groups, bn_policy)
        self.train()

    def train(self, mode: bool = True) -> PhaseModule:
        # Whoever calls .train() gets the policy applied: frozen parts stay in eval mode.
        super().train(mode)
        if mode:
            for module in self._eval_modules:
                module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning 2.x never calls .train() itself: it keeps whatever mode the modules are in (and
        # restores per-module modes after validation), so a module that arrives in train mode would
        # silently update frozen batch-norm statistics. Set the modes explicitly every epoch.
        self.train()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log_dict(
            {f"{split}_loss": loss, f"{split}_acc": acc},
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(y),
        )
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        cfg = self.plan.config
        optimizer = torch.optim.AdamW(
            param_groups(self.model, self.plan.head_lr, self.plan.backbone_lr, cfg.weight_decay)
        )
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = math.ceil(total / max(1, self.trainer.max_epochs))
        scheduler = warmup_cosine(
            optimizer, round(cfg.warmup_epochs * per_epoch), total, cfg.schedule == "cosine"
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class EpochRecorder(L.Callback):
    """One row per epoch: phase, losses, accuracies, the LR of each part, seconds, images/s."""

    def __init__(
        self, phase: str, offset: int, rows: list[dict], on_row: Callable[[dict], None] | None = None
    ):
        self.phase, self.offset, self.rows, self.on_row = phase, offset, rows, on_row

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        groups = trainer.optimizers[0].param_groups
        self._lrs = {g["name"].removesuffix("_no_decay"): g["lr"] for g in groups}

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        m = trainer.callback_metrics
        end = time.perf_counter()
        train_seconds = getattr(self, "_val_start", end) - self._start
        row = {
            "phase": self.phase,
            "epoch": trainer.current_epoch + 1,
            "step_epoch": self.offset + trainer.current_epoch + 1,
            **{
                k: round(float(m[k]), 6) for k in ("train_loss", "train_acc", "val_loss", "val_acc") if k in m
            },
            "lr_head": self._lrs.get("head", 0.0),
            "lr_backbone": self._lrs.get("backbone", 0.0),
            "seconds": round(end - self._start, 2),
            "train_images_per_s": round(len(trainer.train_dataloader.dataset) / max(train_seconds, 1e-9), 1),
        }
        self.rows.append(row)
        if self.on_row:
            self.on_row(row)
