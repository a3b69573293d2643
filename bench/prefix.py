"""Phase 2 with the last N layer groups unfrozen: the frozen prefix cached vs run every step, side by side.

    python bench/prefix.py [--dataset neu] [--unfreeze 2] [--epochs 3] [--views 1]
    python bench/prefix.py --steps-only    # one training step (batch 32), online vs cached, interleaved

MobileNetV2 (installed ImageNet weights) at 128 px. Both runs start from the same phase 1 (the head solved
on cached features, computed once in a fresh THAW_HOME shared by both runs) and run exactly ``--epochs``
epochs of phase 2 (early stopping off). Online trains with thaw's default augmentation; cached trains on
``--views`` cached views per image (1 = no augmentation). Printed: seconds per phase-2 epoch of each and
their ratio, the one-off cost of the prefix cache, and validation accuracy after the same epochs. Then one
training step on one batch, online vs cached, alternated 6 times (median): a ratio that shifting load on
a shared machine moves less. Written to bench/out/prefix-<time>/prefix.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from cached import DATASETS, config  # noqa: E402  (bench/cached.py: the same data and model settings)


def phase2(summary) -> dict:
    p = summary.phases["phase2"]
    rows = p.epochs
    return {
        "epochs": len(rows),
        "s_per_epoch": round(statistics.fmean(r["seconds"] for r in rows), 2),
        "s_per_epoch_each": [r["seconds"] for r in rows],
        "phase_s": p.seconds,
        "val_acc_last_epoch": rows[-1]["val_acc"],
        "val_acc_best": p.val.accuracy,
        "test_acc_best": p.test.accuracy if p.test is not None else None,
        "features": p.features,
    }


def step_ratio(unfreeze: int, batch: int = 32, repeats: int = 6) -> dict:
    """Seconds of one AdamW-free training step (forward, loss, backward) on one batch of 128 px images:
    through the whole model vs through the suffix from cached activations, alternated."""
    import torch
    import torch.nn.functional as F

    from thaw.core.config import ModelConfig
    from thaw.core.strategies import PhasePlan
    from thaw.models import build_classifier
    from thaw.train.freeze import batchnorm_eval, set_trainable
    from thaw.train.prefix import prefix_split

    model = build_classifier(ModelConfig(name="mobilenet_v2", weights="IMAGENET1K_V1"), 6, image_size=128)
    plan = PhasePlan("phase2", train=f"last:{unfreeze}", features="cached")
    groups = plan.groups(len(model.layer_groups))
    set_trainable(model, groups, plan.bn_policy)
    split = prefix_split(model, plan)
    model.train()
    for m in batchnorm_eval(model, groups, plan.bn_policy):
        m.eval()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 3, 128, 128, generator=g), torch.randint(0, 6, (batch,), generator=g)
    with torch.no_grad():
        z = split.prefix(x)
    steps = {"online": lambda: model(x), "cached": lambda: model.head(split.suffix(z))}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, forward in steps.items():
            start = time.perf_counter()
            F.cross_entropy(forward(), y).backward()
            times[name].append(time.perf_counter() - start)
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "batch": batch,
        "online_step_s": round(median["online"], 3),
        "cached_step_s": round(median["cached"], 3),
        "online_over_cached_per_step": round(median["online"] / median["cached"], 2),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="neu", choices=DATASETS)
    p.add_argument("--unfreeze", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--views", type=int, default=1, help="cached views per training image (1 = none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps-only", action="store_true", help="only the interleaved one-step timing")
    args = p.parse_args()
    if not Path(DATASETS[args.dataset]["data.path"]).exists():
        sys.exit(f"skipped: {DATASETS[args.dataset]['data.path']} is absent")
    import thaw
    from thaw.train.recipe import quiet_lightning
    from thaw.weights.install import install

    quiet_lightning()
    install("mobilenet_v2", log=lambda *_: None)
    out = Path(__file__).parent / "out" / f"prefix-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.steps_only:
        steps = step_ratio(args.unfreeze)
        print(json.dumps(steps))
        out.mkdir(parents=True, exist_ok=True)
        (out / "prefix.json").write_text(json.dumps({**vars(args), "steps": steps}, indent=2))
        return
    common = {
        "unfreeze": str(args.unfreeze),
        "seed": args.seed,
        "phase2.epochs": args.epochs,
        "phase2.patience": args.epochs + 1,  # every epoch runs: per-epoch times and accuracy after N epochs
        "prefix_views": args.views,
    }
    result: dict = {"dataset": args.dataset, "model": "mobilenet_v2", "image_size": 128, **vars(args)}
    with tempfile.TemporaryDirectory() as home:
        os.environ["THAW_HOME"] = home  # phase 1's features computed by the first run, reused by the second
        for mode in ("online", "cached"):
            cfg = config(args.dataset, out / mode, phase2_features=mode, **common)
            start = time.perf_counter()
            summary = thaw.fit(cfg, quiet=True).summary
            result[mode] = {**phase2(summary), "run_s": round(time.perf_counter() - start, 1)}
            print(mode, json.dumps(result[mode]), flush=True)
    online, cached = result["online"], result["cached"]
    result["online_over_cached_per_epoch"] = round(online["s_per_epoch"] / cached["s_per_epoch"], 2)
    with_cache = cached["phase_s"] + cached["features"].get("cache_seconds", 0.0)
    result["online_over_cached_phase2_incl_cache"] = round(online["phase_s"] / with_cache, 2)
    print(
        f"\nphase 2, last {args.unfreeze} layer groups, {args.epochs} epochs, {args.dataset}, "
        "mobilenet_v2 128px:"
        f"\n  online {online['s_per_epoch']:.2f} s/epoch, cached prefix {cached['s_per_epoch']:.2f} s/epoch: "
        f"{result['online_over_cached_per_epoch']:.1f}x"
        f"\n  prefix cache computed once in {cached['features'].get('cache_seconds')} s; whole phase 2 incl. "
        f"that: {result['online_over_cached_phase2_incl_cache']:.1f}x"
        f"\n  val accuracy after {args.epochs} epochs: online {100 * online['val_acc_last_epoch']:.1f}%, "
        f"cached {100 * cached['val_acc_last_epoch']:.1f}% (best epoch: {100 * online['val_acc_best']:.1f}% "
        f"vs {100 * cached['val_acc_best']:.1f}%; "
        f"test {online['test_acc_best']} vs {cached['test_acc_best']})"
    )
    result["steps"] = step_ratio(args.unfreeze)
    steps = result["steps"]
    print(
        f"  one training step, batch {steps['batch']}, alternated: online {steps['online_step_s']} s, cached "
        f"{steps['cached_step_s']} s: {steps['online_over_cached_per_step']:.1f}x"
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
