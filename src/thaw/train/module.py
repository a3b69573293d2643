"""The Lightning module for one phase plan, and the callback that records each epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import lightning as L
import torch
from torchmetrics import MeanMetric

from thaw.core.strategies import PhasePlan
from thaw.metrics.classification import classification_metrics
from thaw.models import Classifier
from thaw.train import adapters
from thaw.train.freeze import batchnorm_eval, set_trainable
from thaw.train.losses import loss_for
from thaw.train.optim import param_groups, warmup_cosine


def epoch_seed(seed: int, phase: int, epoch: int) -> int:
    """The RNG seed of one epoch of one phase: a resumed run draws exactly what an uninterrupted one does."""
    return (seed * 1_000_003 + phase * 10_007 + epoch) % (2**63)


class PhaseModule(L.LightningModule):
    """Trains a :class:`Classifier` for one plan. A new module, and so a new optimizer and schedule built
    from exactly the trainable parameters, for every plan: no param groups added mid-run.

    ``anchor``: the pretrained backbone parameters, for an ``l2-sp`` plan. ``forward``: from a batch to
    logits when batches are not images (activations at a cached prefix's boundary); default the model.
    ``compile``: train through ``torch.compile(model)`` (the weights stay the model's own);
    ``channels_last``: that memory layout (both for image batches, not with ``forward``).

    Losses and accuracies are torchmetrics means over images: under DDP their sums are gathered from every
    rank, so the epoch's figures are those of the whole split, as one process would compute them.
    """

    def __init__(
        self,
        model: Classifier,
        plan: PhasePlan,
        seed: int = 0,
        index: int = 0,
        anchor: dict[str, torch.Tensor] | None = None,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
        class_weights: torch.Tensor | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ):
        super().__init__()
        self.model = model
        self.channels_last = channels_last and forward is None
        # every phase sets its layout, so a phase runs the same kernels whether the phase before it ran in
        # this process or a resumed run loaded its weights (the cached prefix's suffix trains contiguous)
        model.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        net = torch.compile(model) if compile and forward is None else model
        self._forward = forward or net.__call__  # a function, not a submodule: the state holds one model
        self.class_weights = class_weights  # --balance loss: by class (multi-label: positives by label)
        self.multilabel = model.multilabel  # a sigmoid and binary cross-entropy per label
        self.loss = loss_for(model)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        names = [f"{split}_{m}" for split in ("train", "val") for m in ("loss", "acc")]
        self.metrics = torch.nn.ModuleDict({n: MeanMetric(nan_strategy="disable") for n in names})
        self.plan = plan
        self.seed, self.index = seed, index
        self.groups = plan.groups(len(model.layer_groups))
        set_trainable(model, self.groups, plan.bn_policy, plan.trainable)
        # Modules that stay in eval mode while training. A fully frozen backbone (head only) runs entirely
        # in eval mode, dropout included, so its features are a fixed function of the image.
        if not self.groups and plan.bn_policy != "fastai":
            self._eval_modules = [model.backbone]
        else:
            self._eval_modules = batchnorm_eval(model, self.groups, plan.bn_policy)
        # LoRA / SSF: adapters beside the frozen weights of the groups, merged by the phase's end (recipe)
        adapters.attach(model, self.groups, plan.trainable, plan.lora_rank, epoch_seed(seed, index, 0))
        self._anchored: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        if plan.regularizer == "l2-sp":
            if anchor is None:
                raise ValueError("an l2-sp plan needs the pretrained backbone parameters as anchor")
            params = dict(model.backbone.named_parameters())
            self._anchored = [(params[n], anchor[n]) for n in params if params[n].requires_grad]
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
        # Dropout draws from the global RNG: seed it per epoch so a resumed run continues exactly.
        torch.manual_seed(epoch_seed(self.seed, self.index, self.current_epoch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def regularizer(self) -> torch.Tensor:
        """L2-SP: squared distance of the trainable backbone parameters from the pretrained ones."""
        total = sum(((p - a.to(p.device)) ** 2).sum() for p, a in self._anchored)
        return self.plan.regularizer_strength * total

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        x, y = batch
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self._forward(x)
        smoothing = self.plan.label_smoothing if split == "train" else 0.0
        weight = None
        if split == "train" and self.class_weights is not None:
            weight = self.class_weights.to(logits.device)
        losses = self.loss(logits, y, weight, smoothing, reduction="none")  # per image
        if self.multilabel:  # per image the mean over its labels; accuracy label-wise at 0.5
            counts = torch.ones_like(losses)
            correct = ((logits >= 0) == y.bool()).float().mean(1)
        else:  # with class weights, image i counts w[y_i] times (cross_entropy's weighted mean)
            counts = weight[y] if weight is not None else torch.ones_like(losses)
            correct = (logits.argmax(dim=1) == y).float()
        loss = losses.sum() / counts.sum()
        if split == "val":
            self._val_outputs.append((self.model.probabilities(logits.detach()).cpu(), y.detach().cpu()))
        metric = self.metrics[f"{split}_loss"]
        metric.update((losses / counts).detach(), counts.detach())
        self.log(f"{split}_loss", metric, on_step=False, on_epoch=True, prog_bar=True)
        metric = self.metrics[f"{split}_acc"]
        metric.update(correct.detach())
        self.log(f"{split}_acc", metric, on_step=False, on_epoch=True, prog_bar=True)
        if split == "train" and self._anchored:
            reg = self.regularizer()
            self.log("train_reg", reg, on_step=False, on_epoch=True, batch_size=len(y))
            loss = loss + reg
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        """val_auc, val_balanced_accuracy and val_f1 over the whole validation split (``--monitor``;
        multi-label: the mean AUC over the labels, and the means at thresholds 0.5)."""
        outputs = self._val_outputs
        if self.trainer.world_size > 1:  # every rank holds its shard: gather the whole split
            shards: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shards, outputs)
            outputs = [o for shard in shards for o in shard]
        if not outputs:
            return
        probs = torch.cat([p for p, _ in outputs])
        labels = torch.cat([y for _, y in outputs])
        m = classification_metrics(probs, labels)
        self.log_dict(
            {"val_auc": m.auc, "val_balanced_accuracy": m.balanced_accuracy, "val_f1": m.macro_f1},
            on_step=False,
            on_epoch=True,
        )

    def configure_optimizers(self):
        plan = self.plan
        group_lrs = plan.group_lr(len(self.model.layer_groups))
        groups = param_groups(self.model, plan.head_lr(), group_lrs, plan.weight_decay, plan.backbone_lr())
        optimizer = (
            torch.optim.SGD(groups, momentum=0.9, nesterov=True)
            if plan.optimizer == "sgd"
            else torch.optim.AdamW(groups)
        )
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = math.ceil(total / max(1, self.trainer.max_epochs))
        scheduler = warmup_cosine(
            optimizer,
            round(plan.warmup_epochs * per_epoch),
            total,
            plan.schedule == "cosine",
            round(plan.head_warmup_epochs * per_epoch),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


VAL_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "val_balanced_accuracy", "val_f1")


class EpochRecorder(L.Callback):
    """One row per epoch: phase, losses, accuracies, the head's and the top backbone group's LR, seconds,
    images/s. Its rows travel in every checkpoint, so a resumed phase keeps its history."""

    def __init__(self, phase: str, offset: int, on_row: Callable[[dict], None] | None = None):
        self.phase, self.offset, self.on_row = phase, offset, on_row
        self.rows: list[dict] = []

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        lrs: dict[str, float] = {}
        for g in trainer.optimizers[0].param_groups:
            name = "head" if g["name"].startswith("head") else "backbone"
            lrs[name] = max(lrs.get(name, 0.0), g["lr"])
        self._lrs = lrs

    def on_validation_epoch_start(self, trainer, pl_module):
        self._val_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        # Runs before the checkpoint of this epoch is saved (ModelCheckpoint is a monitoring callback,
        # called after the others), so the checkpoint holds this row too.
        m = trainer.callback_metrics
        end = time.perf_counter()
        train_seconds = getattr(self, "_val_start", end) - self._start
        row = {
            "phase": self.phase,
            "epoch": trainer.current_epoch + 1,
            "step_epoch": self.offset + trainer.current_epoch + 1,
            **{k: round(float(m[k]), 6) for k in VAL_KEYS if k in m},
            "lr_head": self._lrs.get("head", 0.0),
            "lr_backbone": self._lrs.get("backbone", 0.0),
            "seconds": round(end - self._start, 2),
            "train_images_per_s": round(len(trainer.train_dataloader.dataset) / max(train_seconds, 1e-9), 1),
        }
        self.rows.append(row)
        if self.on_row:
            self.on_row(row)
