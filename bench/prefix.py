"""Phase 2 with the last N layer groups unfrozen: the frozen prefix cached vs run every step, side by side.

    python bench/prefix.py [--dataset neu] [--unfreeze 2] [--epochs 3] [--views 1]

MobileNetV2 (installed ImageNet weights) at 128 px. Both runs start from the same phase 1 (the head solved
on cached features, computed once in a fresh THAW_HOME shared by both runs) and run exactly ``--epochs``
epochs of phase 2 (early stopping off). Online trains with thaw's default augmentation; cached trains on
``--views`` cached views per image (1 = no augmentation). Printed: seconds per phase-2 epoch of each and
their ratio, the one-off cost of the prefix cache, and validation accuracy after the same epochs. Written
to bench/out/prefix-<time>.json.
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="neu", choices=DATASETS)
    p.add_argument("--unfreeze", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--views", type=int, default=1, help="cached views per training image (1 = none)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if not Path(DATASETS[args.dataset]["data.path"]).exists():
        sys.exit(f"skipped: {DATASETS[args.dataset]['data.path']} is absent")
    import thaw
    from thaw.train.recipe import quiet_lightning
    from thaw.weights.install import install

    quiet_lightning()
    install("mobilenet_v2", log=lambda *_: None)
    out = Path(__file__).parent / "out" / f"prefix-{time.strftime('%Y%m%d-%H%M%S')}"
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
    out.mkdir(parents=True, exist_ok=True)
    (out / "prefix.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
