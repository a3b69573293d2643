"""The opening of phase 2, step by step, per factor (issue 25): does phase 2 start where phase 1 ended?

    python bench/phase2_opening.py DATA [--size 128] [--variants default sgd ...] [--steps N] [--out FILE]

Phase 1 is thaw's own: the frozen backbone's features of every training image (eval view), the head
solved on them (``thaw.train.head_solver``) and copied into the model. Each variant then starts from
exactly that model and trains phase 2 the way ``PhaseModule`` does (``set_trainable``,
``batchnorm_eval``, ``param_groups``, the warmup + cosine schedule of a 10-epoch phase), for one epoch of
steps (or ``--steps``), with one factor changed: the batch-norm policy, the head's dropout, the optimizer
and warmup, the head's and the backbone's LR, the augmentation. Logged:

- every step: the training batch's loss and accuracy (train mode, as phase 2 sees it);
- every ``PROBE_EVERY`` steps: on a fixed probe of validation images in eval mode, the accuracy and the
  share of predictions that still agree with phase 1's;
- at the end of the epoch: validation accuracy and loss (to set beside phase 1's), and per backbone layer
  the relative weight change ``||dW|| / ||W||`` and the relative change of its batch norm's output on
  the probe images (the update as the network sees it: a weight change times gamma / sqrt(running var)).

Results go to one JSON file per dataset (rewritten after every variant, so a cut run keeps its part).
Timings are not the point; run it with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
PROBE = 64
PROBE_EVERY = 5
PHASE2_EPOCHS = 10
MOMENTUM: dict[int, float | None] = {}  # each batch norm's momentum as built
CALIBRATION = 128  # training images (eval view) that the tracked batch-norm statistics are measured on

# each variant: changes from the default phase 2 (AdamW, BN frozen, head dropout 0.2, warmup 1 epoch,
# head 1e-3, backbone 1e-4, standard augmentation)
VARIANTS = {
    "default": {},
    "aug-none": {"augment": "none"},
    "dropout0": {"dropout": 0.0},
    "head-fixed": {"head_lr": 0.0},
    "head-low": {"head_lr": 1e-4},  # lp-ft: the head at the backbone's LR
    "ratio100": {"backbone_lr": 1e-5},
    "sgd": {"optimizer": "sgd"},
    "warmup3": {"warmup": 3.0},
    "bn-train": {"bn": "train"},
    "bn-fastai": {"bn": "fastai"},
    "bn-recal": {"recalibrate": True},
    "no-warmup": {"warmup": 0.0},
    "adam-eps": {"eps": 1e-4},
    "fix": {"augment": "none", "dropout": 0.0},
    "r100-head-fixed": {"backbone_lr": 1e-5, "head_lr": 0.0},
    "r100-head-low": {"backbone_lr": 1e-5, "head_lr": 1e-4},
    "r30": {"backbone_lr": 3e-5},
    # batch-norm statistics that follow the weights: each BN's output on calibration images held where phase
    # 1 left it (its statistics moved by how far its input's moved), every `track` steps / only at the end
    "bn-track": {"track": 5},
    "bn-track1": {"track": 1},
    "bn-end": {"track": -1},
    # AdaBN before phase 1 (the head solved on target statistics), then batch norm in train mode
    "recal-train": {"recalibrate": True, "bn": "train"},
    # the default since the sixth stop: batch norm in train mode, first folded so that it computes phase
    # 1's features (thaw.train.tracked.fold); then one factor at a time
    "matched": {"bn": "matched"},
    "matched-head-fixed": {"bn": "matched", "head_lr": 0.0},
    "matched-head-low": {"bn": "matched", "head_lr": 1e-4},
    "matched-dropout0": {"bn": "matched", "dropout": 0.0},
    "matched-aug-none": {"bn": "matched", "augment": "none"},
    "matched-ratio100": {"bn": "matched", "backbone_lr": 1e-5},
    "matched-warmup3": {"bn": "matched", "warmup": 3.0},
    # batch statistics in the forward pass, but the running statistics (what validation uses) kept at the
    # fold's: how much of the epoch's change is the running statistics' own movement?
    "matched-stats-held": {"bn": "matched", "momentum": 0.0},
}
DEFAULT = {
    "augment": "standard",
    "dropout": 0.2,
    "head_lr": 1e-3,
    "backbone_lr": 1e-4,
    "optimizer": "adamw",
    "warmup": 1.0,
    "bn": "frozen",
    "recalibrate": False,
    "eps": 1e-8,
    "track": 0,
    "momentum": None,
}


class StatTracker:
    """``--bn-policy tracked``'s statistics (``thaw.train.tracked``) on this script's own loop: the reference
    taken now, ``update`` before a validation."""

    def __init__(self, model, x):
        from types import SimpleNamespace

        from thaw.train.freeze import BN_TYPES
        from thaw.train.tracked import TrackedStatistics

        bns = [m for m in model.backbone.modules() if isinstance(m, BN_TYPES)]
        self.module = SimpleNamespace(model=model, _eval_modules=bns, groups=range(len(model.layer_groups)))
        self.tracker = TrackedStatistics(x)
        self.tracker.on_train_start(None, self.module)

    def update(self) -> None:
        from types import SimpleNamespace

        self.tracker.on_validation_start(SimpleNamespace(sanity_checking=False), self.module)


def setup(path: str, size: int, seed: int):
    import thaw
    from thaw import data as thaw_data
    from thaw.core.config import override
    from thaw.core.run_log import Reporter
    from thaw.models.build import build_classifier
    from thaw.train.recipe import Loaders

    config = override(
        thaw.RunConfig(),
        {"data.path": path, "data.image_size": size, "model.weights": "IMAGENET1K_V1", "seed": seed},
    )
    sources = thaw_data.discover(config.data)
    model = build_classifier(config.model, len(sources.class_names), sources.class_names, size)
    loaders = Loaders(sources, model, config, Reporter(quiet=True))
    return config, model, loaders


@torch.no_grad()
def features(model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    xs, ys = [], []
    for x, y in loader:
        xs.append(model.backbone(x))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def solve(model, loaders, config) -> dict:
    """Phase 1: the head solved on the frozen backbone's features (the eval view), copied into the model."""
    from thaw import data as thaw_data
    from thaw.train.head_solver import solve_head

    evaluation = thaw_data.eval_transform(loaders.pre)
    train = thaw_data.loader(loaders.decoded["train"], evaluation, config.data, shuffle=False)
    tx, ty = features(model, train)
    vx, vy = features(model, loaders.val)
    solution = solve_head(tx, ty, vx, vy, len(model.class_names))
    with torch.no_grad():
        model.head[-1].weight.copy_(solution.weight)
        model.head[-1].bias.copy_(solution.bias)
    return {"l2": solution.l2, "head_weight_norm": float(solution.weight.norm())}


@torch.no_grad()
def scores(model, batches) -> tuple[float, float, torch.Tensor]:
    model.eval()
    logits, ys = [], []
    for x, y in batches:
        logits.append(model(x))
        ys.append(y)
    logits, y = torch.cat(logits), torch.cat(ys)
    return float((logits.argmax(1) == y).float().mean()), float(F.cross_entropy(logits, y)), logits.argmax(1)


def bn_pairs(model) -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """(name, conv, the batch norm after it) for every conv of the backbone followed by a batch norm."""
    pairs, last = [], None
    for name, m in model.backbone.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            last = (name, m)
        elif isinstance(m, torch.nn.BatchNorm2d) and last is not None:
            pairs.append((last[0], last[1], m))
            last = None
    return pairs


@torch.no_grad()
def bn_outputs(model, x) -> dict[str, torch.Tensor]:
    """Each batch norm's output on ``x`` (eval mode)."""
    model.eval()
    out, hooks = {}, []
    for name, _, bn in bn_pairs(model):
        hooks.append(bn.register_forward_hook(lambda m, i, o, name=name: out.__setitem__(name, o.detach())))
    model(x)
    for h in hooks:
        h.remove()
    return out


def recalibrate(model, loaders, config) -> None:
    """Batch-norm running statistics recomputed on the target training images (eval view), then the head
    re-solved on the recalibrated features: phase 1 as it would be on recalibrated statistics."""
    from thaw import data as thaw_data

    evaluation = thaw_data.eval_transform(loaders.pre)
    train = thaw_data.loader(loaders.decoded["train"], evaluation, config.data, shuffle=False)
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass
    model.backbone.train()
    with torch.no_grad():
        for x, _ in train:
            model.backbone(x)
    model.eval()
    solve(model, loaders, config)


def run_variant(name, settings, model, start_state, loaders, config, probe, steps, phase1_val):
    from thaw import data as thaw_data
    from thaw.core.augment_policy import parse as parse_augment
    from thaw.train.freeze import batchnorm_eval, set_trainable
    from thaw.train.optim import param_groups, warmup_cosine

    s = {**DEFAULT, **settings}
    model.load_state_dict(start_state)
    for m in model.modules():  # an attribute, not state: as built, whatever the variant before set
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = MOMENTUM.setdefault(id(m), m.momentum)
    torch.manual_seed(config.seed)
    record = {"variant": name, "settings": s}
    if s["recalibrate"]:
        recalibrate(model, loaders, config)
        acc, loss, _ = scores(model, loaders.val)
        record["recalibrated_phase1_val"] = {"acc": acc, "loss": loss}
    model.head[0].p = s["dropout"]
    px, _ = probe
    _, _, reference = scores(model, [probe])
    before_bn = bn_outputs(model, px)
    weights0 = {n: c.weight.detach().clone() for n, c, _ in bn_pairs(model)}
    n_groups = len(model.layer_groups)
    groups = list(range(n_groups))
    set_trainable(model, groups, s["bn"])
    if s["head_lr"] == 0.0:
        model.head.requires_grad_(False)
    eval_modules = batchnorm_eval(model, groups, s["bn"])
    pgroups = param_groups(
        model, max(s["head_lr"], 1e-12), [s["backbone_lr"]] * n_groups, 0.01, s["backbone_lr"]
    )
    pgroups = [g for g in pgroups if g["params"]]
    if s["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(pgroups, momentum=0.9, nesterov=True)
    else:
        optimizer = torch.optim.AdamW(pgroups, eps=s["eps"])
    policy = parse_augment(s["augment"], config.data.crop_scale_min, config.data.hflip)
    loaders.use(policy)
    train = loaders.train(1)
    per_epoch = len(train)
    if s["bn"] == "matched":  # as MatchedStatistics does at the phase's start
        from torch import nn

        from thaw.train.tracked import MatchedStatistics, fold

        class Phase(nn.Module):  # what fold and MatchedStatistics.layers read of a PhaseModule
            def __init__(self):
                super().__init__()
                self.model, self._forward, self._eval_modules = model, model.__call__, eval_modules

        phase = Phase()
        fold(phase, MatchedStatistics.layers(phase), train)
        if s["momentum"] is not None:
            for b in MatchedStatistics.layers(phase):
                b.momentum = s["momentum"]
        acc, loss, _ = scores(model, loaders.val)
        record["folded_phase1_val"] = {"acc": acc, "loss": loss}  # must equal phase 1's
    scheduler = warmup_cosine(optimizer, round(s["warmup"] * per_epoch), PHASE2_EPOCHS * per_epoch, True)
    steps = steps or per_epoch
    tracker = None
    if s["track"]:
        evaluation = thaw_data.eval_transform(loaders.pre)
        calib = thaw_data.loader(loaders.decoded["train"], evaluation, config.data, shuffle=False)
        cx = torch.cat([x for x, _ in calib])[:CALIBRATION]
        tracker = StatTracker(model, cx)
    log, step, start = [], 0, time.perf_counter()
    while step < steps:
        for x, y in train:
            model.train()
            for m in eval_modules:
                m.eval()
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if tracker is not None and s["track"] > 0 and step % s["track"] == 0:
                tracker.update()
            row = {
                "step": step,
                "loss": round(float(loss), 4),
                "acc": round(float((logits.argmax(1) == y).float().mean()), 4),
            }
            if step % PROBE_EVERY == 0 or step == 1:
                acc, _, pred = scores(model, [probe])
                row["probe_acc"] = round(acc, 4)
                row["probe_agree"] = round(float((pred == reference).float().mean()), 4)
            log.append(row)
            print(name, row, flush=True)
            if step >= steps:
                break
    if tracker is not None:
        if s["track"] < 0:  # the diagnostic: how much of the fall do stale statistics explain?
            acc, loss, _ = scores(model, loaders.val)
            record["val_before_correction"] = {"acc": acc, "loss": loss}
        tracker.update()
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["steps"] = log
    acc, loss, _ = scores(model, loaders.val)
    record["val"] = {"acc": acc, "loss": loss, "drop_points": round(100 * (phase1_val[0] - acc), 2)}
    after_bn = bn_outputs(model, px)
    layers = []
    for n, conv, bn in bn_pairs(model):
        w0 = weights0[n]
        amp = (bn.weight.abs() / (bn.running_var + bn.eps).sqrt()).detach()
        rel_out = float((after_bn[n] - before_bn[n]).norm() / before_bn[n].norm().clamp_min(1e-12))
        layers.append(
            {
                "layer": n,
                "depthwise": conv.groups > 1,
                "rel_weight_change": round(float((conv.weight - w0).norm() / w0.norm()), 5),
                "rel_output_change": round(rel_out, 5),
                "amp_median": round(float(amp.median()), 2),
                "amp_max": round(float(amp.max()), 2),
                "weight_rms": round(float(w0.pow(2).mean().sqrt()), 5),
            }
        )
    record["layers"] = layers
    feats_before = before_bn[layers[-1]["layer"]]
    record["top_output_change"] = layers[-1]["rel_output_change"]
    del feats_before
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=0, help="0: one epoch")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config, model, loaders = setup(args.data, args.size, args.seed)
    t = time.perf_counter()
    solver = solve(model, loaders, config)
    acc, loss, _ = scores(model, loaders.val)
    px = torch.stack([loaders.val.dataset[i][0] for i in range(min(PROBE, len(loaders.val.dataset)))])
    py = torch.as_tensor([int(loaders.val.dataset[i][1]) for i in range(len(px))])
    name = Path(args.data).name
    out = Path(args.out or ROOT / "bench" / "out" / "opening" / f"{name}-{args.size}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "data": args.data,
        "size": args.size,
        "seed": args.seed,
        "train_images": len(loaders.decoded["train"].images),
        "phase1": {"val_acc": acc, "val_loss": loss, **solver, "seconds": round(time.perf_counter() - t, 1)},
        "variants": {},
    }
    if out.is_file():  # keep variants measured before
        result["variants"] = json.loads(out.read_text()).get("variants", {})
    print("phase1", result["phase1"], flush=True)
    start_state = copy.deepcopy(model.state_dict())
    for v in args.variants:
        record = run_variant(
            v, VARIANTS[v], model, start_state, loaders, config, (px, py), args.steps, (acc, loss)
        )
        result["variants"][v] = record
        print(v, "val", record["val"], flush=True)
        out.write_text(json.dumps(result, indent=1))
    table(result)


def table(result: dict) -> None:
    p1 = result["phase1"]
    print(
        f"{result['data']} {result['size']}px phase 1 val acc {100 * p1['val_acc']:.1f} "
        f"loss {p1['val_loss']:.3f}"
    )
    for v, r in result["variants"].items():
        before = r.get("val_before_correction")
        uncorrected = f" | uncorrected {100 * before['acc']:.1f}" if before else ""
        top = max(r["layers"], key=lambda layer: layer["rel_output_change"])
        print(
            f"{v:11s} val acc {100 * r['val']['acc']:5.1f} (drop {r['val']['drop_points']:5.1f}) "
            f"loss {r['val']['loss']:.3f}"
            f" | probe agree@end {r['steps'][-1].get('probe_agree', math.nan)}"
            f" | top-layer out change {r['top_output_change']:.3f}; "
            f"largest {top['rel_output_change']:.3f} at {top['layer']}" + uncorrected
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["table"]:
        for f in sys.argv[2:]:
            table(json.loads(Path(f).read_text()))
    else:
        main()
