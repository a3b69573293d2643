"""Domain adaptation around the recipe: AdaBN before phase 1, one pseudo-label round after the last plan.

**AdaBN** (Li et al. 2016): a pretrained backbone's batch-norm layers normalise with ImageNet's
statistics; on ultrasound or microscopy those are the wrong mean and variance. Before phase 1, every
backbone batch-norm layer's running mean and variance are recomputed on the target images (a cumulative
average over batches, eval transform, no gradient). Nothing else changes: no weight, no affine parameter
(tested). Only before phase 1: with the default ``--bn-policy frozen``, phase 2 learns its weights
against these statistics, so re-estimating them after phase 2 would change what the weights were
trained with; with ``--bn-policy train`` phase 2 already updates them on the training images.

**Pseudo-labels** (Lee 2013, FixMatch-lite without its consistency loss): the kept model predicts the
unlabelled images; those predicted with probability >= ``--pseudo-threshold`` become labels, class
balanced (below), and one more fine-tuning round (phase 2's settings) runs on labelled + pseudo-labelled
images. Class balance: of the confident predictions, class c keeps at most its share of the labelled
images times their number, its most confident first. Without a cap a model biased to the majority class
labels mostly that class and feeds its own bias; a cap set by the scarcest class instead (keeping the
labelled proportions exactly) kept nothing on BreastMNIST at 25% of the labels, where few malignant
predictions are confident.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from thaw import data as thaw_data
from thaw.core.config import dicom_window
from thaw.core.errors import ThawError
from thaw.core.results import PhaseResult
from thaw.core.strategies import PhasePlan
from thaw.data.budget import UNLABELLED, folder_items
from thaw.data.decoded import Decoded, decode
from thaw.models import Classifier
from thaw.train.probabilities import probabilities
from thaw.train.recipe import Context, Feed, run_phase


def check_unlabelled(config, sources: thaw_data.Sources) -> None:
    """Before a run folder exists: the folders given have images, and pseudo-labels have a source."""
    if config.adabn_data:
        folder_items(config.adabn_data, "--adabn-data")
    if config.data.unlabeled:
        folder_items(config.data.unlabeled, "--unlabeled")
    elif config.pseudo_labels and not sources.split(UNLABELLED):
        raise ThawError(
            "--pseudo-labels needs unlabelled images: give --unlabeled DIR, or a label budget "
            "(--label-fraction, --labels-per-class) that leaves some training images unlabelled"
        )


def _decoded(items, model: Classifier, ctx: Context, what: str) -> Decoded:
    data = ctx.config.data
    window = dicom_window(data.dicom_window) if data.dicom_window else None
    decoded, failed = decode(items, model.preprocessing, model.spec.in_channels, data.strict_images, window)
    if failed:
        ctx.report.warn(f"{what}: skipped {len(failed)} undecodable image(s): {', '.join(failed[:5])}")
    if not decoded.images:
        raise ThawError(f"{what}: none of the {len(items)} images could be decoded")
    return decoded


def batch_norms(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adabn(model: Classifier, images: list[torch.Tensor], transform, batch_size: int) -> int:
    """Recompute every backbone batch-norm layer's running statistics on ``images`` (uint8 tensors, put
    through ``transform``); returns the number of layers. Only batch-norm buffers change."""
    layers = batch_norms(model.backbone)
    if not layers:
        return 0
    was_training = model.training
    saved = [(m.momentum, m.training) for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches, not an exponential one
        m.train()
    starts = list(range(0, len(images), batch_size))
    if len(starts) > 1 and len(images) - starts[-1] == 1:  # batch norm in train mode needs 2+ values
        starts.pop()
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(images)
        model.backbone(torch.stack([transform(x) for x in images[start:end]]))
    for m, (momentum, training) in zip(layers, saved):
        m.momentum = momentum
        m.train(training)
    model.train(was_training)
    return len(layers)


def run_adabn(model: Classifier, ctx: Context) -> dict:
    """AdaBN on ``--adabn-data`` or every training image (labelled or not); what ``summary.json`` keeps."""
    config, sources = ctx.config, ctx.loaders.sources
    start = time.perf_counter()
    if config.adabn_data:
        decoded = _decoded(folder_items(config.adabn_data, "--adabn-data"), model, ctx, "--adabn-data")
        source = config.adabn_data
    else:
        images = list(ctx.loaders.decoded["train"].images)
        if sources.split(UNLABELLED):
            images += _decoded(sources.split(UNLABELLED), model, ctx, "unlabelled split").images
        decoded = Decoded([], images, [])
        source = "training images (labelled and unlabelled)"
    layers = adabn(
        model, decoded.images, thaw_data.eval_transform(model.preprocessing), config.data.batch_size
    )
    if not layers:
        ctx.report.warn(f"--adabn: {config.model.name} has no batch-norm layers; AdaBN changed nothing")
    record = {
        "images": len(decoded.images),
        "source": source,
        "layers": layers,
        "when": "before phase 1",
        "seconds": round(time.perf_counter() - start, 1),
    }
    ctx.report.say(f"AdaBN: {layers} batch-norm layers re-estimated on {len(decoded.images)} {source}")
    return record


def select(probs: torch.Tensor, threshold: float, prior: torch.Tensor) -> torch.Tensor:
    """Indices of the pseudo-labels kept: the confident ones (max probability >= ``threshold``), and of
    class c at most ``prior[c]`` (its share of the labelled images) times their number, its most
    confident first."""
    confidence, predicted = probs.max(dim=1)
    confident = confidence >= threshold
    total = int(confident.sum())
    kept = []
    for c in range(probs.shape[1]):
        idx = torch.nonzero(confident & (predicted == c)).flatten()
        idx = idx[confidence[idx].argsort(descending=True)]
        kept.append(idx[: round(total * float(prior[c]))])
    return torch.cat(kept).sort().values


def pseudo_round(
    model: Classifier,
    role: tuple[int, PhasePlan],
    ctx: Context,
    results: dict[str, PhaseResult],
    kept_phase: str,
) -> tuple[PhaseResult | None, dict]:
    """Label the unlabelled images with the kept model, keep the confident ones (class balanced), and
    fine-tune once more on labelled + pseudo-labelled images under the strategy's ``pseudo`` plan
    (``role``: its index and plan). Returns the round's result (None when no pseudo-label passed) and what
    ``summary.json`` reports about it."""
    index, plan = role
    config, loaders = ctx.config, ctx.loaders
    data, source = unlabelled(model, ctx)
    pool = thaw_data.loader(data, thaw_data.eval_transform(model.preprocessing), config.data, shuffle=False)
    probs, truth = probabilities(model, pool)
    chosen, record = pseudo_labels(probs, truth, loaders.decoded["train"].labels, config.pseudo_threshold)
    record = {
        "source": source,
        "images": len(data.images),
        **record,
        "labelled_with": kept_phase,
        "before": _metrics(results[kept_phase]),
    }
    if not len(chosen):
        ctx.report.warn(
            f"pseudo-labels: no unlabelled image passed --pseudo-threshold {config.pseudo_threshold:g} "
            f"(class balanced); no further round"
        )
        return None, {**record, "after": None}
    ctx.report.say(
        f"\npseudo-labels: {len(chosen)} of {len(data.images)} unlabelled images kept "
        f"(per class {record['kept_per_class']}, threshold {config.pseudo_threshold:g})"
        + (f", {100 * record['accuracy']:.1f}% correct" if record["accuracy"] is not None else "")
    )
    labelled = loaders.decoded["train"]
    keep = chosen.tolist()
    predicted = probs.argmax(dim=1)[chosen].tolist()
    combined = Decoded(
        labelled.keys + [data.keys[i] for i in keep],
        labelled.images + [data.images[i] for i in keep],
        labelled.labels + predicted,
    )
    seed, balanced = loaders.train_seed(index), config.balance == "sampler"
    batches = thaw_data.loader(combined, loaders.train_transform, config.data, True, seed, balanced=balanced)
    feed = Feed(batches, loaders.val, note="labelled + pseudo-labelled images")
    # it starts from the kept plan's weights, not the last plan's
    result = ctx.run.finished_phase(plan.name) or run_phase(
        model, plan, index, ctx, results, feed, start=results[kept_phase]
    )
    return result, {**record, "after": _metrics(result)}


def unlabelled(model: Classifier, ctx: Context) -> tuple[Decoded, str]:
    """The images to pseudo-label, decoded: ``--unlabeled``, or the label budget's unlabelled images."""
    config = ctx.config
    if config.data.unlabeled:
        items, source = folder_items(config.data.unlabeled, "--unlabeled"), config.data.unlabeled
    else:
        items, source = ctx.loaders.sources.split(UNLABELLED), "the label budget's unlabelled training images"
    return _decoded(items, model, ctx, "pseudo-labels"), source


def pseudo_labels(
    probs: torch.Tensor, truth: torch.Tensor, train_labels: list[int], threshold: float
) -> tuple[torch.Tensor, dict]:
    """The indices of the pseudo-labels kept (:func:`select`, against the labelled images' class shares)
    and what ``summary.json`` says of them (their accuracy where the truth is known)."""
    labels = torch.tensor(train_labels)
    prior = torch.bincount(labels, minlength=probs.shape[1]).float() / len(labels)
    chosen = select(probs, threshold, prior)
    predicted = probs.argmax(dim=1)
    known = truth[chosen] >= 0
    return chosen, {
        "threshold": threshold,
        "balance": "class c: at most its labelled share x the confident predictions",
        "confident": int((probs.max(dim=1).values >= threshold).sum()),
        "kept": len(chosen),
        "kept_per_class": torch.bincount(predicted[chosen], minlength=probs.shape[1]).tolist(),
        "accuracy": float((predicted[chosen][known] == truth[chosen][known]).float().mean())
        if bool(known.any())
        else None,
    }


def _metrics(result: PhaseResult) -> dict:
    return {
        split: {k: getattr(m, k) for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc")}
        for split in ("val", "test")
        if (m := result.on(split)) is not None
    }
