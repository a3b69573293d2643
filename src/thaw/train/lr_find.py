"""The LR range test (Smith 2017, "Cyclical learning rates"; fastai's ``lr_find``): train for a few
mini-batches while the learning rate grows exponentially, record the smoothed loss, stop when it
diverges, and read a learning rate off the curve.

Phase 1 sweeps the head's LR on the frozen backbone (online features, augmented batches: what a head
trained by epochs sees). Phase 2 starts from a head solved on cached features (what the default phase 1
hands over), keeps the head at its phase-1 LR and sweeps the LR of the unfrozen backbone groups; the
suggested ``lr_ratio`` is then head LR / suggested backbone LR.

Lightning's ``Tuner.lr_find`` is not used: it sets every optimizer parameter group to the same swept LR
(``_LRFinder._exchange_scheduler``), so it cannot hold the head fixed while the backbone sweeps; it
restores the model through a checkpoint file written into the run folder but not the global RNG; and
it offers only the steepest-gradient suggestion. The loop below is those 30 lines, with the model, its
trainable flags and modes, and the RNG restored exactly afterwards (tested).

The suggestion rule is fastai's default, ``valley`` (the middle of the longest stretch over which the
smoothed loss keeps falling): the steepest point of a 100-step smoothed curve is noisy (one step of
the difference quotient decides it) and ``minimum / 10`` depends on where the loss happened to turn up;
the longest falling stretch is where training makes steady progress and sits well below divergence.
Both alternatives are computed, printed and plotted too.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from thaw import data as thaw_data
from thaw.core.config import AUTO, RunConfig, batchnorm_policy, override
from thaw.core.errors import ThawError
from thaw.core.files import write_atomic
from thaw.core.results import dumps
from thaw.core.run_folder import default_out
from thaw.core.run_log import Reporter
from thaw.core.strategies import PhasePlan, for_role, plans_for
from thaw.data import features as feature_cache
from thaw.models import Classifier, build_classifier
from thaw.train import adapters
from thaw.train.head_solver import solve_into
from thaw.train.losses import loss_for
from thaw.train.module import PhaseModule
from thaw.train.optim import param_groups
from thaw.train.recipe import Loaders
from thaw.train.tracked import FOLD_BATCHES, MatchedStatistics, fold

START_LR, END_LR, STEPS = 1e-7, 1.0, 100  # fastai: 1e-7 .. 10 over 100 steps; thaw's LRs are <= 1
BETA = 0.98  # the loss is smoothed as fastai and Lightning do: a debiased exponential moving average
DIVERGED = 4.0  # stop when the smoothed loss exceeds 4 x its lowest (fastai, Lightning) and ln(classes)
MIN_STEPS = 20
MAX_PASSES = 10  # the sweep cycles through the training batches; more passes than this: too little data
RULE = "valley"
SWEPT = {1: "head", 2: "backbone"}  # --phase N: what its range test sweeps (the strategy's plan of that role)
Draw = Callable[["LRFind", str], bytes]  # the finder's plot, drawn by the layer that uses it


@dataclass(frozen=True)
class Sweep:
    """The raw range test: the LR of every step, the loss of its batch and the smoothed loss."""

    lrs: list[float]
    losses: list[float]  # smoothed
    raw_losses: list[float]
    diverged: bool


@dataclass(frozen=True)
class LRFind:
    """What ``thaw lr-find`` found for one phase. ``suggestion`` is the swept LR the rule chose: the head's
    LR in phase 1, the top backbone group's in phase 2 (then ``lr_ratio`` = ``head_lr / suggestion``)."""

    phase: int
    swept: str  # "head" or "backbone"
    suggestion: float
    rule: str
    alternatives: dict[str, float]  # the other rules' suggestions, for comparison
    head_lr: float | None  # phase 2: the head's fixed LR
    lr_ratio: float | None  # phase 2: head_lr / suggestion, at least 1
    default: float  # what thaw uses without a finder: lr (phase 1) or lr / lr_ratio (phase 2)
    start_lr: float
    end_lr: float
    steps: int
    steps_run: int
    stopped: str
    seconds: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    raw_losses: list[float] = field(default_factory=list)
    plot: str | None = None
    head_from: dict | None = None  # phase 2 with lr auto: the phase-1 finder that chose the head LR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def brief(self) -> dict[str, Any]:
        """What a run's summary.json records: the choice and the rule, without the curve."""
        out = {k: v for k, v in self.to_dict().items() if k not in ("lrs", "losses", "raw_losses")}
        return {**out, "head_from": self.head_from and {"suggestion": self.head_from["suggestion"]}}

    def describe(self) -> str:
        alts = ", ".join(f"{k} {v:.2g}" for k, v in self.alternatives.items())
        what = "head lr" if self.swept == "head" else f"backbone lr (head fixed at {self.head_lr:.2g})"
        text = (
            f"phase {self.phase}: suggested {what} {self.suggestion:.2g} (rule: {self.rule}, fastai's "
            f"default: the middle of the longest falling stretch of the smoothed loss; {alts}); "
            f"default {self.default:.2g}"
        )
        if self.lr_ratio is not None:
            text += f"; suggested lr_ratio {self.lr_ratio:.3g} (head {self.head_lr:.2g} / backbone)"
        return text


# ---- the sweep: pure numbers -------------------------------------------------------------------------


def sweep_lrs(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """The LR of each step: exponential from ``start_lr`` to ``end_lr`` inclusive."""
    return [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]


def suggest(lrs: list[float], losses: list[float], steps: int) -> dict[str, float]:
    """fastai's three suggestions on the smoothed curve, over fastai's window (the first tenth of the
    planned steps and the last 5 recorded points left out): ``valley``, ``steep`` (the most negative slope
    of loss over log LR) and ``minimum/10``. Every value is one of ``lrs``."""
    lo, hi = steps // 10, len(losses) - 5
    if hi - lo < 5:
        lo, hi = 0, len(losses)
    x = [math.log(lr) for lr in lrs[lo:hi]]
    y = losses[lo:hi]
    best = min(range(len(y)), key=y.__getitem__)
    slopes = [(y[i + 1] - y[i]) / (x[i + 1] - x[i]) for i in range(len(y) - 1)]
    steep = min(range(len(slopes)), key=slopes.__getitem__)
    return {
        "valley": lrs[lo + valley(y)],
        "steep": lrs[lo + steep],
        "minimum/10": max(lrs[lo + best] / 10, lrs[0]),
    }


def valley(losses: list[float]) -> int:
    """fastai's ``valley``: the longest run of points that keep decreasing (a longest decreasing
    subsequence), and the index about halfway along it."""
    n = len(losses)
    length = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and length[i] < length[j] + 1:
                length[i] = length[j] + 1
        if length[i] > length[end]:
            end, start = i, i - length[i] + 1
    third = (end - start) / 3
    return min(n - 1, max(0, start + int(third) + int(third / 2)))


def smoothed(raw: list[float], beta: float = BETA) -> list[float]:
    out, avg = [], 0.0
    for i, loss in enumerate(raw):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** (i + 1)))
    return out


@contextmanager
def restored(model: torch.nn.Module) -> Iterator[None]:
    """On exit, the model's weights and buffers, trainable flags, train/eval modes and device, and the
    global RNGs (Python, NumPy, torch, CUDA) are exactly what they were on entry."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    device = next(model.parameters()).device
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        adapters.merge(model)  # a LoRA / SSF plan's adapters out: the plain keys of ``state`` again
        model.to(device)
        model.load_state_dict(state)
        for n, p in model.named_parameters():
            p.requires_grad_(grads[n])
            p.grad = None
        for n, m in model.named_modules():
            m.train(modes[n])
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def sweep(
    model: Classifier,
    plan: PhasePlan,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    lrs: list[float],
    swept: str = "head",
    seed: int = 0,
    class_weight: torch.Tensor | None = None,
) -> Sweep:
    """Train ``model`` under ``plan`` (its trainable groups, batch-norm policy, AdamW groups and weight
    decay), one batch per LR of ``lrs``; ``swept="head"`` scales every parameter group's LR with the sweep,
    ``"backbone"`` only the backbone's (the head stays at ``plan.head_lr()``); ``class_weight``: the loss
    weighted by class, as ``--balance loss`` trains. Stops when the smoothed loss diverges. The model and the
    RNG are restored afterwards."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loss_of = loss_for(model)
    with restored(model):
        torch.manual_seed(seed)
        module = PhaseModule(model, plan, seed)  # trainable flags and eval-mode parts, as in training
        model.to(device)
        if plan.bn_policy == "matched":  # as the phase starts: phase 1's features, in train-mode layers
            first = list(itertools.islice(batches, FOLD_BATCHES))
            fold(module, MatchedStatistics.layers(module), first)
            batches = itertools.chain(first, batches)  # the sweep's batches as without the fold
        optimizer, scales = swept_optimizer(model, plan, swept)
        weight = class_weight.to(device) if class_weight is not None else None
        module.train()
        raw, avg, best = [], 0.0, math.inf
        for i, lr in enumerate(lrs):
            x, y = next(batches)
            for g, scale in zip(optimizer.param_groups, scales):
                if scale:
                    g["lr"] = lr * scale
            logits = model(x.to(device))
            loss = loss_of(logits, y.to(device), weight, plan.label_smoothing)
            # a uniform guess costs ln(classes); multi-label, a guess of 0.5 costs ln 2 per label
            chance = math.log(2) if model.multilabel else math.log(logits.shape[1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = loss.item()
            avg = BETA * avg + (1 - BETA) * value
            s = avg / (1 - BETA ** (i + 1))
            raw.append(value)
            # Diverged: 4 x the lowest smoothed loss and worse than a uniform guess, after the first tenth of
            # the sweep (which the rules skip). A solved phase-1 head starts phase 2 near zero loss, where
            # 4 x the lowest alone is batch noise, not a destroyed backbone.
            if not math.isfinite(s) or i >= max(1, len(lrs) // 10) and s > max(DIVERGED * best, chance):
                break
            best = min(best, s)
        model.cpu()
    n = len(raw)
    return Sweep(lrs[:n], smoothed(raw), raw, diverged=n < len(lrs))


def swept_optimizer(
    model: Classifier, plan: PhasePlan, swept: str
) -> tuple[torch.optim.Optimizer, list[float]]:
    """AdamW over the plan's parameter groups, and each group's LR as a multiple of the swept LR (0: held)."""
    backbone = plan.backbone_lr()
    groups = param_groups(
        model, plan.head_lr(), plan.group_lr(len(model.layer_groups)), plan.weight_decay, backbone
    )
    reference = plan.head_lr() if swept == "head" else backbone
    scales = [
        0.0 if swept == "backbone" and g["name"].startswith("head") else g["lr"] / reference for g in groups
    ]
    return torch.optim.AdamW(groups), scales


def cycle(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, pass after pass, each pass in a new shuffled order (fastai and Lightning
    also run a sweep longer than one epoch)."""
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def sweep_steps(n_images: int, batch_size: int, steps: int | None = None) -> int:
    """The sweep's length: ``steps``, or by default 100 (fastai's) or as many as ``MAX_PASSES`` passes
    over the training batches allow. Raises if the training split is too small for a sweep."""
    batches = n_images // batch_size + (n_images % batch_size > 1)  # the loader drops a last batch of 1
    most = batches * MAX_PASSES
    if steps is None:
        steps = min(STEPS, most)
    if most < MIN_STEPS or steps > most:
        fix = f"use --steps {most} or fewer, " if most >= MIN_STEPS else ""
        raise ThawError(
            f"the training split ({n_images} images, {batches} batch(es) of {batch_size}) is too small for a "
            f"{steps}-step LR sweep: it would pass over every image more than {MAX_PASSES} times; {fix}"
            f"a smaller --batch-size, or more images"
        )
    if steps < MIN_STEPS:
        raise ThawError(
            f"--steps {steps} is too few for an LR sweep: use at least {MIN_STEPS} (default {STEPS})"
        )
    return steps


# ---- one phase, from a config ------------------------------------------------------------------------


def lr_find(
    config: RunConfig,
    phase: int = 1,
    out: str | Path | None = None,
    sources: thaw_data.Sources | None = None,
    steps: int | None = None,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    say: Callable[[str], None] = print,
    warn: Callable[[str], None] = print,
    draw: Draw | None = None,
    head_lr: float | None = None,
) -> LRFind:
    """The LR range test of ``phase`` (1: the head on the frozen backbone; 2: the unfrozen backbone groups,
    the head fixed at ``head_lr``, default the config's ``lr``, after a phase-1 head solved on cached
    features), on the strategy's plan of that role. With ``lr`` ``auto`` and no ``head_lr``, phase 2 runs the
    phase-1 test first and fixes the head at its suggestion. Writes ``lr_find_phase<N>.json`` (and its
    plot, ``.png``, where ``draw`` draws one) into ``out``, never over existing files; the global RNG is
    left as it was."""
    config.validate()
    if phase not in SWEPT:
        raise ThawError(f"--phase {phase} must be 1 (the head) or 2 (the unfrozen backbone)")
    if not 0 < start_lr < end_lr <= 10:
        raise ThawError(f"the sweep needs 0 < --start-lr < --end-lr <= 10; got {start_lr:g} .. {end_lr:g}")
    swept = SWEPT[phase]
    sources = sources or thaw_data.discover(config.data)
    steps = sweep_steps(len(sources.split("train")), config.data.batch_size, steps)
    out = Path(out) if out is not None else default_out(f"lr-find-{sources.name}", config.model.name)
    head_first = swept == "backbone" and config.lr == AUTO and head_lr is None
    _check_new(out, [1, phase] if head_first else [phase])
    head_from = None
    if head_first:
        first = lr_find(config, 1, out, sources, steps, start_lr, end_lr, say, warn, draw)
        head_from, head_lr = first.brief(), first.suggestion
    resolved = (config if head_lr is None else override(config, {"lr": head_lr})).resolved()
    index, plan = role_plan(resolved, swept)
    lrs = sweep_lrs(start_lr, end_lr, steps)
    say(
        f"lr-find phase {phase}: {swept} LR {start_lr:g} -> {end_lr:g} over {steps} batches of "
        f"{config.data.batch_size} ({sources.name}, {config.model.name})"
    )
    start = time.perf_counter()
    result = _sweep_run(resolved, sources, index, plan, swept, lrs, warn)
    _check_curve(result, steps, start_lr, swept)
    found = _found(result, phase, swept, plan, steps, start_lr, end_lr, time.perf_counter() - start)
    plot = f"lr_find_phase{phase}.png" if draw else None
    found = dataclasses.replace(found, head_from=head_from, plot=plot)
    out.mkdir(parents=True, exist_ok=True)
    if draw is not None:
        write_atomic(out / found.plot, draw(found, f"{sources.name} - {config.model.name}"))
    write_atomic(out / f"lr_find_phase{phase}.json", dumps(found.to_dict()))
    say(found.describe())
    return found


def role_plan(config: RunConfig, swept: str) -> tuple[int, PhasePlan]:
    """The strategy's plan whose LR a sweep of ``swept`` finds, trained online, and its index."""
    role = for_role(swept, config, plans_for(config))
    if role is None:
        raise ThawError(
            "lr-find --phase 2: the strategy has no phase that unfreezes the backbone "
            "(--phase2-epochs 0?); there is nothing to sweep"
        )
    index, plan = role
    bn = batchnorm_policy(plan.bn_policy, config.data.batch_size)  # as the run holds it (preflight)
    return index, dataclasses.replace(plan, features="online", bn_policy=bn)


def _sweep_run(
    config: RunConfig, sources, index: int, plan: PhasePlan, swept: str, lrs: list[float], warn
) -> Sweep:
    """A fresh model (its phase-1 head solved first when the backbone is swept) and the sweep, seeded."""
    with _seeded(config.seed):
        L.seed_everything(config.seed, verbose=False)
        classes = sources.class_names
        model = build_classifier(
            config.model, len(classes), classes, config.data.image_size, sources.multilabel
        )
        loaders = Loaders(sources, model, config, Reporter(quiet=True))
        weights = loaders.class_weights if config.balance == "loss" else None  # as training weighs them
        if swept == "backbone":
            _solve_head(model, loaders, config, warn, weights)
        return sweep(model, plan, cycle(loaders.train(index)), lrs, swept, config.seed, weights)


def _found(
    result: Sweep,
    phase: int,
    swept: str,
    plan: PhasePlan,
    steps: int,
    start_lr: float,
    end_lr: float,
    seconds: float,
) -> LRFind:
    """The sweep read by the rules: the suggestion, the others, and the LR thaw uses without a finder."""
    chosen = suggest(result.lrs, result.losses, steps)
    suggestion = chosen.pop(RULE)
    head_lr = plan.lr if swept == "backbone" else None
    return LRFind(
        phase=phase,
        swept=swept,
        suggestion=suggestion,
        rule=RULE,
        alternatives=chosen,
        head_lr=head_lr,
        lr_ratio=max(1.0, head_lr / suggestion) if head_lr else None,
        default=plan.lr if swept == "head" else plan.backbone_lr(),
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        steps_run=len(result.lrs),
        stopped="the loss diverged" if result.diverged else "end of the range",
        seconds=round(seconds, 1),
        lrs=result.lrs,
        losses=result.losses,
        raw_losses=result.raw_losses,
    )


def _check_new(out: Path, phases: list[int]) -> None:
    """thaw lr-find never overwrites: the files of ``phases`` must not exist in ``out``."""
    names = [f"lr_find_phase{p}.{ext}" for p in phases for ext in ("png", "json")]
    existing = [str(out / n) for n in names if (out / n).exists()]
    if existing:
        raise ThawError(f"{existing[0]} already exists; choose another --out (thaw lr-find never overwrites)")


def resolve_auto(
    config: RunConfig,
    sources: thaw_data.Sources,
    out: Path,
    say: Callable[[str], None],
    warn,
    draw: Draw | None = None,
) -> tuple[dict[str, float], dict]:
    """``--lr auto`` / ``--lr-ratio auto``: run the phase-1 (and phase-2) finder. Returns the numbers found
    (``lr``, ``lr_ratio``: for :meth:`RunConfig.resolved`) and the finders' brief results
    (``thaw.train.resolve`` puts both in the run's ``Resolved``)."""
    found: dict[str, float] = {}
    records: dict[str, Any] = {}
    if AUTO == config.lr:
        first = lr_find(config, 1, out, sources, say=say, warn=warn, draw=draw)
        found["lr"], records["phase1"] = first.suggestion, first.brief()
    if AUTO == config.lr_ratio:
        second = lr_find(config, 2, out, sources, say=say, warn=warn, draw=draw, head_lr=found.get("lr"))
        found["lr_ratio"], records["phase2"] = second.lr_ratio, second.brief()
    return found, records


def check_auto(config: RunConfig, plans: list[PhasePlan]) -> None:
    """``auto`` for an LR no plan of the strategy uses is a mistake the user should hear about."""
    solved = [p for p in plans if p.kind == "solve"]  # no LR: L-BFGS
    trained = [p for p in plans if not p.interpolate_from and p not in solved]
    if "lr" in config.auto and not trained:
        raise ThawError(
            "--lr auto: no phase of this run trains with an LR (phase 1 is solved on cached features and "
            "phase 2 is skipped); drop --lr auto, or use --phase1 online or --phase2-epochs > 0"
        )
    if "lr_ratio" in config.auto and not any(p.train != "head" for p in trained):
        raise ThawError(
            "--lr-ratio auto: no phase of this run unfreezes the backbone (phase 2 is skipped); drop "
            "--lr-ratio auto or give --phase2-epochs > 0"
        )


# ---- helpers ---------------------------------------------------------------------------------------


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed for the finder's own draws (the new head, batch order) and give the caller its RNG back."""
    rng = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.set_rng_state(rng[2])


def _solve_head(model: Classifier, loaders, config: RunConfig, warn, class_weight=None) -> None:
    """Phase 1 as the default recipe does it: the head solved to convergence on cached features (with
    ``class_weight``, the class-weighted loss of ``--balance loss``)."""
    pre = model.preprocessing
    evaluation = thaw_data.eval_transform(pre)
    feats = {
        s: feature_cache.features(
            model.backbone,
            loaders.sources.split(s),
            evaluation,
            {"kind": "eval"},
            pre,
            model.spec.in_channels,
            seed=config.seed,
            decoded=loaders.decoded[s],
            batch_size=max(config.data.batch_size, 64),
            warn=warn,
            channels_last=config.hardware.channels_last,
        )
        for s in ("train", "val")
    }
    solve_into(model, feats["train"], feats["val"], class_weight)


def _check_curve(result: Sweep, steps: int, start_lr: float, swept: str) -> None:
    """A sweep whose first loss is not a number, that diverged before the rules have points to read
    (they skip the first tenth and the last 5), or whose head never learned, has no curve to read. (From a
    solved head, a phase-2 curve that only rises is a finding, not an error.)"""
    if not result.raw_losses or not math.isfinite(result.raw_losses[0]):
        raise ThawError(
            f"the loss of the first batch is not finite (lr {start_lr:g}): check the images and labels "
            f"(thaw fit would stop on it too)"
        )
    lowest = min(range(len(result.losses)), key=result.losses.__getitem__)
    where = f"stopped at lr {result.lrs[-1]:.2g} after {len(result.lrs)} of {steps} steps"
    if result.diverged and len(result.lrs) < steps // 10 + 10:
        raise ThawError(
            f"the loss diverged from the first steps of the sweep ({where}): start lower, e.g. "
            f"--start-lr {start_lr / 100:g}, or check the images and labels"
        )
    if swept == "head" and result.diverged and lowest == 0:
        raise ThawError(
            f"the head's loss never fell below its first value before it diverged ({where}): check the "
            f"images and labels, or sweep from lower, e.g. --start-lr {start_lr / 100:g}"
        )
