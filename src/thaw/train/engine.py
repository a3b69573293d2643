"""The engine: run a strategy's phase plans in order, each from the best weights of the one before, and
keep the weights of the phase with the best validation accuracy (``--monitor``). The default strategy is
two plans (``strategies.two_phase``): a new head on the frozen backbone, then unfreeze and fine-tune with
the backbone at ``lr / lr_ratio``. What runs after training (forgetting, the operating point, shift,
figures, the report) is not called from here: ``thaw.use.run`` composes it."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch

from thaw import data as thaw_data
from thaw.core.augment_policy import parse as parse_augment
from thaw.core.errors import ThawError
from thaw.core.resolved import Resolved
from thaw.core.results import PhaseResult, choose_final
from thaw.core.run_folder import RunFolder, Stored
from thaw.core.run_log import Reporter
from thaw.core.strategies import PhasePlan
from thaw.data.sources import label_gaps
from thaw.models import Classifier, build_classifier
from thaw.train import adapt, augment_check, distributed
from thaw.train.forgetting import Probe
from thaw.train.prefix import cached_prefix
from thaw.train.probabilities import view_probabilities
from thaw.train.recipe import Context, Loaders, quiet_lightning, run_phase
from thaw.train.steps import cached_head, interpolate

Step = Callable[[Classifier, PhasePlan, int, Context, dict], PhaseResult]

STEPS: dict[str, Step] = {
    "solve": cached_head,  # a frozen backbone: features once, the head solved
    "prefix": cached_prefix,  # a frozen prefix: its activations once, the suffix trained by epochs
    "online": run_phase,  # trained by epochs on images
    "interpolate": interpolate,  # WiSE-FT between two plans' weights
}


def step(kind: str) -> Step:
    """The step that runs a plan of ``kind`` (``PhasePlan.kind``)."""
    if kind not in STEPS:
        raise ThawError(f"unknown step kind {kind!r}: a plan is run by one of {', '.join(STEPS)}")
    return STEPS[kind]


def run_plans(model: Classifier, plans: list[PhasePlan], ctx: Context) -> dict[str, PhaseResult]:
    """Each plan in turn, by the step its kind names, from the best weights of the plan before; a plan a
    resumed run finished before is read, not rerun. ``--augment auto`` is checked before the first plan
    that fine-tunes the backbone."""
    results: dict[str, PhaseResult] = {}
    for index, plan in enumerate(plans):
        if ctx.augment is None and augments(plan):
            ctx.augment = choose_augmentation(model, ctx, trained_head=bool(results))
        run = step(plan.kind)
        results[plan.name] = ctx.run.finished_phase(plan.name) or run(model, plan, index, ctx, results)
        distributed.barrier()  # rank 0 has saved the plan's weights: every rank goes on from them
        model.load_state_dict(ctx.run.load_weights(plan.name))
    return results


@dataclass
class Trained:
    """What the engine hands over: the model on the kept plan's weights, the run's context, every plan's
    result, and what the analyses after training start from (the pretrained probe)."""

    model: Classifier
    ctx: Context
    sources: thaw_data.Sources
    resolved: Resolved
    results: dict[str, PhaseResult]
    final: str
    probe: Probe
    adabn: dict | None
    pseudo: dict | None

    @functools.cached_property
    def predictions(self) -> dict[str, Stored]:
        """The kept model's probabilities on val and test (``--tta``: averaged over the views), computed
        once, on the kept weights: the operating point and its figures read them, and the run folder
        stores them (``predictions.npz``) for evaluate, the report and the studies."""
        config, pre, classes = self.ctx.config, self.model.preprocessing, self.model.class_names
        return {
            split: Stored(
                split,
                list(data.keys),
                view_probabilities(self.model, data.images, pre, config.tta).numpy(),
                np.asarray(data.labels),
                classes,
                config.tta,
            )
            for split, data in self.ctx.loaders.decoded.items()
            if split in ("val", "test")
        }


def train(run: RunFolder, resolved: Resolved, sources: thaw_data.Sources, report: Reporter) -> Trained:
    """Build the model and the loaders, measure the pretrained side, AdaBN if asked, run the plans, keep
    the best, and one pseudo-label round if asked (its plan from the plans, ``Resolved.pseudo``)."""
    config, plans = resolved.config, resolved.plans
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    classes = sources.class_names
    model = build_classifier(config.model, len(classes), classes, config.data.image_size, sources.multilabel)
    with distributed.rank_zero_first():  # rank 0 fills the decoded-image store, the others read it
        loaders = Loaders(sources, model, config, report)
    probe = Probe.measure(model, loaders.decoded["val"])  # the pretrained side of the diagnostics
    ctx = Context(config, loaders, run, report, probe.start)  # the start is also l2-sp's anchor
    hardware = getattr(config, "hardware", None)
    hardware = (distributed.accelerator(hardware), distributed.size()) if hardware is not None else None
    report.start(config, sources, model, loaders, plans, hardware)
    gaps = label_gaps(sources)  # multi-label: labels without a positive in train or val
    if gaps:
        report.warn(gaps)
    adabn = adapt.run_adabn(model, ctx) if config.adabn else None
    results = run_plans(model, plans, ctx)
    final = choose_final(results, config.monitor)
    model.load_state_dict(run.load_weights(final))
    pseudo = None
    if resolved.pseudo is not None:  # one more round on labelled + confidently pseudo-labelled images
        result, pseudo = adapt.pseudo_round(model, resolved.pseudo, ctx, results, final)
        if result is not None:
            results[result.name] = result
            final = choose_final(results, config.monitor)
        model.load_state_dict(run.load_weights(final))
    # the analyses read the model in the run's configured layout (``--channels-last``), whichever plan ran
    # last and whether it ran in this process: a run resumed after its plans had finished (the model built
    # anew, in the contiguous layout) then computes the same numbers as the uninterrupted one
    model.to(memory_format=torch.channels_last if config.hardware.channels_last else torch.contiguous_format)
    return Trained(model, ctx, sources, resolved, results, final, probe, adabn, pseudo)


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
