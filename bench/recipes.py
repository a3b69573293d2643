"""Fine-tuning recipes side by side on real data: phase 1 vs phase 2, per setting, in one run.

    python bench/recipes.py hymenoptera            # default recipe on ../shared/data/hymenoptera
    python bench/recipes.py breastmnist --grid bn-lr  # BN policy x LR ratio on BreastMNIST
    python bench/recipes.py breastmnist --grid lr-auto --set data.image_size=64  # --lr auto vs default

Prints one row per setting (val/test accuracy and AUC after each phase, the gain, seconds) and writes
the same rows as JSON next to the runs (bench/out/, ignored by git).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import thaw
from thaw.core.config import override
from thaw.models.paths import installed_file
from thaw.weights.imports import import_weights
from thaw.weights.install import install

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATASETS = {
    "hymenoptera": {"data.path": str(SHARED / "hymenoptera"), "data.image_size": 128},
    "breastmnist": {"data.path": str(SHARED / "breastmnist.npz"), "data.image_size": 128, "data.hflip": True},
    "neu": {"data.path": str(SHARED / "neu-surface-defects"), "data.image_size": 128},
    "digits": {"data.path": "builtin:digits", "data.image_size": 64, "data.hflip": False},
}
BASE = {"model.name": "mobilenet_v2", "model.weights": "IMAGENET1K_V1"}
GRIDS = {
    "default": {"default (frozen BN, ratio 10)": {}},
    "bn-lr": {
        "bn frozen, ratio 10": {"bn_policy": "frozen", "lr_ratio": 10.0},
        "bn frozen, ratio 100": {"bn_policy": "frozen", "lr_ratio": 100.0},
        "bn train, ratio 10": {"bn_policy": "train", "lr_ratio": 10.0},
        "no phase 1, bn train, ratio 1": {"phase1.epochs": 0, "bn_policy": "train", "lr_ratio": 1.0},
    },
    "lr-auto": {
        "default (lr 1e-3, ratio 10)": {},
        "lr auto": {"lr": "auto"},
        "lr auto, ratio auto": {"lr": "auto", "lr_ratio": "auto"},
    },
    "models": {
        "mobilenet_v2": {},
        "tf_efficientnet_lite0": {"model.name": "timm/tf_efficientnet_lite0", "model.weights": "DEFAULT"},
        "dinov2 vit-s/14": {
            "model.name": "timm/vit_small_patch14_dinov2",
            "model.weights": "DEFAULT",
            "data.image_size": 112,
        },
    },
}


def pct(x):
    return f"{100 * x:5.1f}" if x == x else "   - "


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", choices=DATASETS)
    p.add_argument("--grid", choices=GRIDS, default="default")
    p.add_argument("--only", nargs="*", help="run only these settings of the grid")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides key=value (YAML values)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data_path = DATASETS[args.dataset]["data.path"]
    if not data_path.startswith("builtin:") and not Path(data_path).exists():
        sys.exit(f"skipped: {data_path} is absent")
    install("mobilenet_v2", log=lambda *_: None)
    if args.grid == "models":
        install("tf_efficientnet_lite0", log=lambda *_: None)
        dinov2 = SHARED.parent / "weights" / "vit_small_patch14_dinov2.imgfocus.safetensors"
        if not installed_file("timm", "vit_small_patch14_dinov2") and dinov2.exists():
            import_weights("timm/vit_small_patch14_dinov2", dinov2, log=lambda *_: None)
    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    out_root = Path(__file__).parent / "out" / f"{args.dataset}-{args.grid}-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for name, changes in GRIDS[args.grid].items():
        if args.only and name not in args.only:
            continue
        config = override(
            thaw.RunConfig(),
            {
                **BASE,
                **DATASETS[args.dataset],
                **changes,
                **extra,
                "seed": args.seed,
                "out": str(out_root / name.replace(" ", "_").replace(",", "").replace("/", "-")),
            },
        )
        summary = thaw.fit(config, quiet=True).summary
        row = {"setting": name, "phases": {}, "final_phase": summary.final_phase, "seed": args.seed}
        row["lr_find"] = {
            k: {"suggestion": v["suggestion"], "lr_ratio": v["lr_ratio"]} for k, v in summary.lr_find.items()
        }
        for r in summary.phases.values():
            metrics = {s: r.on(s) for s in ("val", "test") if r.on(s) is not None}
            row["phases"][r.name] = {
                **{
                    s: {k: getattr(m, k) for k in ("accuracy", "auc", "macro_f1")} for s, m in metrics.items()
                },
                "seconds": r.seconds,
                "epochs": f"{r.best_epoch}/{r.epochs_run}",
            }
        rows.append(row)
        print_row(row, header=len(rows) == 1)
    (out_root / "rows.json").write_text(json.dumps(rows, indent=2))


def print_row(row: dict, header: bool) -> None:
    """One line per setting: each phase's val/test accuracy and test AUC, in the strategy's order."""
    if header:
        print(f"{'setting':34} | phases: val / test acc, test AUC (best/ran epochs) | seconds")
    cells = []
    for name, r in row["phases"].items():
        test = r.get("test", {"accuracy": float("nan"), "auc": float("nan")})
        star = "*" if name == row["final_phase"] else ""
        cells.append(
            f"{name}{star} {pct(r['val']['accuracy'])} / {pct(test['accuracy'])}, "
            f"AUC {pct(test['auc'])} ({r['epochs']:>5})"
        )
    seconds = sum(r["seconds"] for r in row["phases"].values())
    print(f"{row['setting']:34} | {' | '.join(cells)} | {seconds:7.0f}", flush=True)


if __name__ == "__main__":
    main()
