"""Callbacks that keep a phase honest: a loss or weight that stops being a finite number ends the phase on
its last good weights, and Ctrl-C leaves the trainer as a plain ``KeyboardInterrupt`` the CLI reports."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping


def finite(tensors) -> bool:
    """Every floating-point tensor in ``tensors`` holds only finite numbers."""
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


class NonFiniteGuard(L.Callback):
    """Stops the phase when the training loss or the trained weights become NaN or infinite.

    The weights each epoch starts from are kept in memory; when the loss of a batch is not finite, or the
    weights are not finite when validation starts, they are put back and the trainer stops. Validation
    and the checkpoints then see the last good weights, never non-finite ones, and the phase ends on its
    best checkpoint as usual. ``reason`` says what happened (``None``: nothing did); it travels in the
    checkpoints, so a resumed run knows the phase is over."""

    def __init__(self, phase: str, warn: Callable[[str], None] | None = None) -> None:
        self.phase, self.warn = phase, warn
        self.reason: str | None = None
        self._good: dict[str, torch.Tensor] | None = None
        self._stopped_at: int | None = None

    def state_dict(self) -> dict:
        return {"reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        self.reason = state.get("reason")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._good = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad = self.reason is None and loss is not None and not torch.isfinite(loss.detach()).all()
        # under DDP every rank stops when one does (the decision is a collective: every rank asks)
        if trainer.strategy.reduce_boolean_decision(bool(bad), all=False) and self.reason is None:
            shown = f"{float(loss):g}" if bad else "not finite on another process"
            self._stop(trainer, pl_module, f"the training loss became {shown} at batch {batch_idx + 1}")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._good is None:
            return
        if self.reason is not None:
            if self._stopped_at == trainer.current_epoch:
                # the epoch it stopped in: validation sees the last good state exactly, whatever acted on
                # the model since (``matched`` measures its statistics before validating: on the same
                # weights they would differ from the last good ones, and score as another epoch)
                pl_module.load_state_dict(self._good)
            return
        bad = not finite(pl_module.parameters()) or not finite(pl_module.buffers())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            self._stop(trainer, pl_module, "the weights stopped being finite numbers")

    def _stop(self, trainer, pl_module, what: str) -> None:
        self._stopped_at = trainer.current_epoch
        epoch = trainer.current_epoch + 1
        self.reason = f"epoch {epoch}: {what}"
        if self._good is not None:
            pl_module.load_state_dict(self._good)
        trainer.should_stop = True
        if self.warn:
            self.warn(
                f"{self.phase} stopped in {self.reason}; it ends on its best weights before that "
                f"(lower --lr, or check the images for NaN)"
            )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning answers Ctrl-C with sys.exit(1) and no word; raise it on as KeyboardInterrupt instead,
        # so the caller says where the run stands and how to resume it.
        if isinstance(exception, KeyboardInterrupt):
            raise exception


class IncomingGuard(L.Callback):
    """Stops a phase that has fallen below the weights it started from and is not on course to beat them.

    ``incoming``: the validation scores of those weights, by logged key (``val_loss`` and the metric that
    picks the plan kept: ``val_acc``, or ``--monitor``'s). An epoch beats them when either is better (a
    lower loss, a higher metric); from then on the usual early stopping alone decides. Until then the gate
    judges the trend, not one epoch: from the ``patience``-th epoch on, the phase's best score so far is
    projected to the end of its budget (``epochs``) at the rate it improved over the last ``patience``
    epochs, and the phase stops when neither score would then beat the incoming one. A phase that dips and
    climbs back (issue 25: on a defect-tile set phase 2 fell from 94.6 to 73% in its opening and climbed
    about 3 points an epoch; the old rule, "stop when an epoch improves on neither best", cut it at epoch 5
    on one flat epoch, while the same recipe reached 98% by epoch 8-10) goes on while the climb would
    reach the incoming score in time; one that has stalled below it stops, since the rest of its budget
    would go to weights the run will not keep. Its state travels in the checkpoints.

    ``grace``: epochs added before the first judgement (``warmup_grace`` of the plan's warmup; 0 for the
    default's 1-epoch warmup): with the LR still rising, a phase that opens flat has not begun to climb, and
    the trend rule read that as a stall (issue 25: ``--phase2-warmup-epochs 5`` opened within 0.7 points of
    phase 1 on small marks, and the gate stopped it at epoch 3 of 10, before its LR reached its peak)."""

    def __init__(self, incoming: dict[str, float], patience: int, epochs: int, grace: int = 0) -> None:
        self.incoming, self.patience, self.budget, self.grace = incoming, patience, epochs, grace
        self.beaten, self.stopped, self.epochs = False, False, 0
        self.best: dict[str, float] = {}
        self.history: dict[str, list[float]] = {}  # the best score so far, after each epoch

    def state_dict(self) -> dict:
        return {
            "beaten": self.beaten,
            "stopped": self.stopped,
            "epochs": self.epochs,
            "best": self.best,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.beaten, self.stopped = bool(state["beaten"]), bool(state["stopped"])
        self.epochs, self.best = int(state["epochs"]), dict(state.get("best", {}))
        self.history = {k: list(v) for k, v in state.get("history", {}).items()}

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.beaten:
            return
        self.epochs += 1
        logged = trainer.callback_metrics
        for key, score in self.incoming.items():
            if key not in logged:
                continue
            value, best = float(logged[key]), self.best.get(key)
            # float32 metrics against float64 records: a tie must not count as a gain
            if _better(key, value, score):
                self.beaten = True
            if best is None or _better(key, value, best):
                self.best[key] = value
            self.history.setdefault(key, []).append(self.best[key])
        if not self.beaten and self.epochs >= self.patience + self.grace and not self.on_course():
            self.stopped = True
            trainer.should_stop = True

    def on_course(self) -> bool:
        """Would either score, improving at its rate of the last ``patience`` epochs, beat the incoming
        weights' by the end of the budget?"""
        left = max(0, self.budget - self.epochs)
        for key, score in self.incoming.items():
            window = self.history.get(key, [])[-self.patience :]
            if not window:
                continue
            rate = (window[-1] - window[0]) / max(1, len(window) - 1)
            if _better(key, window[-1] + rate * left, score):
                return True
        return False


def warmup_grace(warmup_epochs: float) -> int:
    """Epochs of a warmup that stopping rules leave unjudged: those past its first (0 for the default's
    1-epoch warmup). With the LR still rising, a phase has not begun to move."""
    return max(0, math.ceil(warmup_epochs) - 1)


class EarlyStoppingAfterWarmup(EarlyStopping):
    """Lightning's early stopping, from the end of a long warmup on (``warmup_grace``): a 5-epoch warmup
    with patience 3 was stopped at epoch 4-5 of 10, its LR not yet at its peak (issue 25). Its checkpoint
    state keeps the ``EarlyStopping...`` key prefix that thaw reads back."""

    def __init__(self, *args, grace: int = 0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grace = grace

    def _run_early_stopping_check(self, trainer) -> None:
        if trainer.current_epoch >= self.grace:
            super()._run_early_stopping_check(trainer)


def _better(key: str, value: float, than: float) -> bool:
    return value < than - 1e-6 if key == "val_loss" else value > than + 1e-6
