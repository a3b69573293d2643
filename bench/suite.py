"""The suite every default change is judged on: the shared datasets, the built-in digits and a set of small
marks on real steel tiles, each with several candidates and seeds, on one split per dataset (paired).

    python bench/suite.py run [--datasets neu hep2] [--candidates default standard] [--seeds 0 1 2]
    python bench/suite.py run --column 128 [--datasets ...]  # the user's settings: 128 px, 10 epochs
    python bench/suite.py table [--markdown]
    python bench/suite.py costs [--datasets ...]     # what the augmentation check measures, op by op

Resumable and runnable in parts: every run is an ordinary thaw run folder under
``bench/out/suite/<dataset>/<candidate>-seed<k>``; a finished one is read back, an interrupted one resumed.
``table`` prints, per dataset and candidate, the converged probe (phase 1: the logistic regression solved
on the frozen features), the final model, the gain, test accuracy (and AUC where binary) as mean +- sd
over seeds, the paired difference from the default, and wall seconds.

A candidate whose settings resolve to exactly the default's (``standard`` where the check kept the
standard policy) is the same computation with the same seeds; it is run anyway only with ``--no-alias``.

``tiles`` is made here from ``../shared/data/neu-surface-defects``: every image gets a dark spot of 1% of
its area at a random place, or none (label ``marked`` / ``clean``), so the label is a small mark that a
random crop can cut out of the picture, as on the industrial defect sets thaw is tried on; ``edge-tiles``
puts the spot in the outer 12% band of the tile, where half-area crops cut it away most often.
``small-marks`` is ``bench/small_marks.py``'s synthetic set: 6 classes of glazed tiles, 70% defect-free,
the others with one small mark (spot, scratch, crack, chip, stain), as on issue 25's defect tiles.

``--column 128`` is the suite at the user's default command (``thaw fit DATA --image-size 128 --weights
IMAGENET1K_V1``: 128 px, phase 2's default 10 epochs), in ``bench/out/suite-128``; the default column
(64 px, 6 epochs) stays in ``bench/out/suite``. ``lp-ft`` is the default with one change, phase 2's head at
the backbone's LR (1e-4) instead of 1e-3: the head-LR lever of issue 25.

Each row also has phase 2's *opening*: its first epoch's validation accuracy minus phase 1's (points; issue
25's target is no lower than -1).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "bench" / "out" / "suite"
DATASETS = {
    "digits": {"data.path": "builtin:digits", "data.hflip": False},
    "hymenoptera": {"data.path": str(SHARED / "hymenoptera")},
    "neu": {"data.path": str(SHARED / "neu-surface-defects")},
    "breastmnist": {"data.path": str(SHARED / "breastmnist.npz")},
    "eurosat": {"data.path": str(SHARED / "eurosat-5")},
    "hep2": {"data.path": str(SHARED / "hep2-cells")},
    "tiles": {"data.path": str(ROOT / "bench" / "out" / "suite-data" / "tiles")},
    "edge-tiles": {"data.path": str(ROOT / "bench" / "out" / "suite-data" / "edge-tiles")},
    "small-marks": {"data.path": str(ROOT / "bench" / "out" / "suite-data" / "small-marks")},
}
COLUMNS = {
    "64": ({"data.image_size": 64, "phase2.epochs": 6}, "suite"),
    "128": ({"data.image_size": 128, "phase2.epochs": 10}, "suite-128"),
}
BASE = {
    "model.name": "mobilenet_v2",
    "model.weights": "IMAGENET1K_V1",
    "data.image_size": 64,
    "phase2.epochs": 6,
}
CANDIDATES = {
    "default": {},
    "check015": {"data.augment": "auto"},  # the check at its first threshold, 0.15 (runs kept from then)
    "standard": {"data.augment": "standard"},
    "none": {"data.augment": "none"},
    "light": {"data.augment": "light"},
    "strong": {"data.augment": "strong"},
    "dihedral": {"data.augment": "crop:0.5,hflip,vflip,rot90"},
    "lp-ft": {"strategy": "lp-ft"},
    "discriminative": {"strategy": "discriminative"},
    "gradual": {"strategy": "gradual"},
    "surgical-last": {"strategy": "surgical-last"},
    "l2-sp": {"strategy": "l2-sp"},
    "bitfit": {"strategy": "bitfit"},  # the PEFT variants (batch norm held under the default: _fewer)
    "norm-only": {"strategy": "norm-only"},
    "lora": {"strategy": "lora"},
    "ssf": {"strategy": "ssf"},
    "finetune-low-lr": {"strategy": "finetune-low-lr"},
    "ratio100": {"lr_ratio": 100.0},  # the backbone at 1e-5 (tried as issue 25's default; not kept)
    "dropout0": {"model.dropout": 0.0},
    "no-warmup": {"phase2.warmup_epochs": 0.0},
    "warmup5": {"phase2.warmup_epochs": 5.0},  # the LR ramps over half of phase 2: epoch 1 at a tenth of it
    "sgd": {"optimizer": "sgd", "lr": 1e-2},
    "tracked": {"bn_policy": "tracked"},  # batch-norm statistics that follow the weights (issue 25, 4th stop)
    "tracked-p10": {"bn_policy": "tracked", "phase2.patience": 10},  # ... and no early stopping in 10 epochs
    # batch norm in train mode, phase 1's features kept at the start; validated on the moving average of
    # its statistics (as the fifth and sixth stops ran it)
    "matched": {"bn_policy": "matched", "bn_precise_batches": 0},
    # ... validated on statistics measured at the epoch's end weights, on 20 or 8 training batches
    "precise": {"bn_policy": "matched", "bn_precise_batches": 20},
    "precise8": {"bn_policy": "matched", "bn_precise_batches": 8},  # the default since the seventh stop
    "frozen": {"bn_policy": "frozen"},  # batch norm held on its pretrained statistics (the default before)
    # the head's LR ramps over 3 epochs of phase 2 instead of 1, near its solved optimum while the backbone
    # starts to move (issue 25, seventh stop: the head's own steps were most of the opening left)
    "head-warmup3": {"phase2.head_warmup_epochs": 3.0, "bn_precise_batches": 0},
    # the head's epoch-1 steps were the opening left under precise statistics (bench/opening_check.py,
    # eighth stop): the head at the backbone's LR, or ramped over 3 epochs, with the default's statistics
    "lp-ft-p8": {"strategy": "lp-ft"},
    "head-warmup3-p8": {"phase2.head_warmup_epochs": 3.0},
    "head-warmup3-p20": {"phase2.head_warmup_epochs": 3.0, "bn_precise_batches": 20},  # paired with precise
    "lp-ft-p20": {"strategy": "lp-ft", "bn_precise_batches": 20},  # paired with precise
    # ninth stop: the head at the backbone's LR is the default (--phase2-head-lr backbone); the runs above
    # were recorded with the head at its own lr. default-p20 is lp-ft-p20's run under the new default.
    "default-p20": {"bn_precise_batches": 20},
    # the small-mark tiles' opening is the backbone's own first epoch (eighth stop): phase 2's LR ramped
    # over 2 epochs instead of 1, paired with lp-ft-p20 / default-p20
    "warmup2-p20": {"phase2.warmup_epochs": 2.0, "bn_precise_batches": 20},
    "head-bb-p8": {"phase2_head_lr": "backbone"},  # the default as shipped (8 precise batches), named
    # --strategy auto at its default budget (twice the default's own run, which it runs first)
    "auto": {"strategy": "auto"},
    # the strategies built on phase 2's plan, with the head at its own lr and at the backbone's, paired
    **{
        f"{name}-head-{at}": {"strategy": name, "phase2_head_lr": lr}
        for name in ("discriminative", "l2-sp", "lora", "surgical-last", "gradual")
        for at, lr in (("lr", "lr"), ("bb", "backbone"))
    },
}


def make_tiles(folder: Path, per_class: int = 300, seed: int = 0, edge: float | None = None) -> None:
    """Small dark spots on real NEU steel tiles: ``marked`` (a spot of 1% of the area) or ``clean``.
    ``edge``: the spot lies in the outer band of that share of the side (where half-area crops cut it)."""
    from PIL import Image, ImageDraw

    if (folder / "done").is_file():
        return
    sources = sorted((SHARED / "neu-surface-defects").rglob("*.jpg")) + sorted(
        (SHARED / "neu-surface-defects").rglob("*.bmp")
    )
    if not sources:
        sys.exit(f"tiles: no images under {SHARED / 'neu-surface-defects'}")
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(sources), size=2 * per_class, replace=False)
    for k, index in enumerate(picked):
        label = "marked" if k % 2 else "clean"
        image = Image.open(sources[index]).convert("L")
        if label == "marked":
            w, h = image.size
            r = (0.01 * w * h / np.pi) ** 0.5
            cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
            if edge is not None:  # push one coordinate into the outer band
                band = edge * w
                near = rng.uniform(r, band)
                if rng.random() < 0.5:
                    cx = near if rng.random() < 0.5 else w - near
                else:
                    cy = near if rng.random() < 0.5 else h - near
            ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=int(rng.integers(0, 30)))
        (folder / label).mkdir(parents=True, exist_ok=True)
        image.save(folder / label / f"{k:04d}.png")
    (folder / "done").write_text("")


def make_data(datasets: list[str]) -> None:
    if "small-marks" in datasets:
        sys.path.insert(0, str(ROOT / "bench"))
        from small_marks import make

        make(Path(DATASETS["small-marks"]["data.path"]))
    if "tiles" in datasets:
        make_tiles(Path(DATASETS["tiles"]["data.path"]))
    if "edge-tiles" in datasets:
        make_tiles(Path(DATASETS["edge-tiles"]["data.path"]), seed=1, edge=0.12)


def config(dataset: str, candidate: str, seed: int, out: Path):
    import thaw
    from thaw.core.config import override

    changes = {**BASE, **DATASETS[dataset], **CANDIDATES[candidate], "seed": seed, "out": str(out)}
    return override(thaw.RunConfig(), changes)


class SameAsStandard(Exception):
    """The default's check kept the standard policy: its phase 2 is the standard run's, already there."""


def standard_policy(dataset: str):
    from thaw.core.augment_policy import parse

    return parse("standard", 0.5, DATASETS[dataset].get("data.hflip", True))


def run_one(dataset: str, candidate: str, seed: int) -> dict:
    """One run (or its folder read back, or resumed); its row. A ``default`` run whose augmentation check
    keeps the standard policy while the ``standard`` run of that seed exists stops after the check (the
    rest would repeat that run's computation) and is recorded as ``default-seedK.alias.json``."""
    from thaw.train import augment_check

    out = OUT / dataset / f"{candidate}-seed{seed}"
    alias = out.with_name(out.name + ".alias.json")
    standard = OUT / dataset / f"standard-seed{seed}"
    if alias.is_file():
        return {**run_one(dataset, "standard", seed), "candidate": candidate, "same_as": "standard"}
    start = time.perf_counter()
    original = augment_check.check

    def check(*args, **kwargs):
        policy, record = original(*args, **kwargs)
        kept = policy == standard_policy(dataset)
        if candidate == "default" and kept and (standard / "summary.json").is_file():
            alias.write_text(json.dumps({"same_as": "standard", "augment": record}, indent=1))
            raise SameAsStandard
        return policy, record

    augment_check.check = check
    try:
        return _run_one(dataset, candidate, seed, out, start)
    except SameAsStandard:
        import shutil

        shutil.rmtree(out.with_name(out.name + ".incomplete"), ignore_errors=True)
        return {**run_one(dataset, "standard", seed), "candidate": candidate, "same_as": "standard"}
    finally:
        augment_check.check = original


def _run_one(dataset: str, candidate: str, seed: int, out: Path, start: float) -> dict:
    import thaw
    from thaw.core.results import RunSummary

    if (out / "summary.json").is_file():
        summary = RunSummary.read(out)
        wall = out / "wall.json"
        seconds = json.loads(wall.read_text())["seconds"] if wall.is_file() else None
    else:
        incomplete = out.parent / f"{out.name}.incomplete"
        if incomplete.is_dir():
            summary = thaw.resume(incomplete, quiet=True).summary
        else:
            summary = thaw.fit(config(dataset, candidate, seed, out), quiet=True).summary
        seconds = round(time.perf_counter() - start, 1)
        (out / "wall.json").write_text(json.dumps({"seconds": seconds, "resumed": incomplete.is_dir()}))
    return row(dataset, candidate, seed, summary, seconds)


def row(dataset: str, candidate: str, seed: int, summary, seconds) -> dict:
    first = next(iter(summary.phases.values()))
    final = summary.final
    split = "test" if final.test is not None else "val"
    binary = len(summary.classes) == 2
    out = {
        "dataset": dataset,
        "candidate": candidate,
        "seed": seed,
        "split": split,
        "probe_acc": first.on(split).accuracy,
        "final_acc": final.on(split).accuracy,
        "probe_auc": first.on(split).auc if binary else None,
        "final_auc": final.on(split).auc if binary else None,
        "final_phase": summary.final_phase,
        "epochs": {n: r.epochs_run for n, r in summary.phases.items()},
        "augment": summary.augment.get("chosen"),
        "augment_check": summary.augment.get("ops"),
        "seconds": seconds,
    }
    out["gain"] = out["final_acc"] - out["probe_acc"]
    out["opening"] = opening(summary)
    out["trough"] = trough(summary)
    return out


def _phase2_val(summary) -> tuple[list[float], float] | None:
    """Phase 2's epoch-end validation accuracies and phase 1's (None when no plan after phase 1 trained by
    epochs)."""
    plans = list(summary.phases.values())
    if len(plans) < 2 or not plans[1].epochs:
        return None
    return [float(e["val_acc"]) for e in plans[1].epochs], plans[0].val.accuracy


def opening(summary) -> float | None:
    """Phase 2's first-epoch validation accuracy minus phase 1's: the dip issue 25 is about."""
    found = _phase2_val(summary)
    return None if found is None else found[0][0] - found[1]


def trough(summary) -> float | None:
    """Phase 2's lowest epoch-end validation accuracy minus phase 1's, in whichever epoch it falls: a dip
    that a warmup moves later (to where the LR peaks) shows here and not in ``opening``."""
    found = _phase2_val(summary)
    return None if found is None else min(found[0]) - found[1]


def same_as_default(dataset: str, candidate: str, seed: int) -> bool:
    """``standard`` is the default's computation when the default's check kept the standard policy."""
    if candidate != "standard":
        return False
    summary = OUT / dataset / f"default-seed{seed}" / "summary.json"
    if not summary.is_file():
        return False
    from thaw.core.augment_policy import parse

    chosen = json.loads(summary.read_text()).get("augment", {}).get("chosen_spec")
    hflip = DATASETS[dataset].get("data.hflip", True)
    return chosen == parse("standard", 0.5, hflip).spec()


def cmd_run(args) -> None:
    from thaw.train.recipe import quiet_lightning
    from thaw.weights.install import install

    quiet_lightning()
    install("mobilenet_v2", log=lambda *_: None)
    make_data(args.datasets)
    for seed in args.seeds:  # seed by seed: a partial suite covers every dataset
        for dataset in args.datasets:
            for candidate in args.candidates:
                if not args.no_alias and same_as_default(dataset, candidate, seed):
                    print(
                        json.dumps(
                            {"dataset": dataset, "candidate": candidate, "seed": seed, "same_as": "default"}
                        ),
                        flush=True,
                    )
                    continue
                r = run_one(dataset, candidate, seed)
                print(json.dumps(r), flush=True)


def rows() -> list[dict]:
    from thaw.core.results import RunSummary

    found = []
    for folder in sorted(OUT.glob("*/*-seed*")):
        if folder.name.endswith(".incomplete") or not (folder / "summary.json").is_file():
            continue
        candidate, _, seed = folder.name.rpartition("-seed")
        wall = folder / "wall.json"
        seconds = json.loads(wall.read_text())["seconds"] if wall.is_file() else None
        found.append(row(folder.parent.name, candidate, int(seed), RunSummary.read(folder), seconds))
    for alias in sorted(OUT.glob("*/*-seed*.alias.json")):  # default = standard where the check kept it
        candidate, _, seed = alias.name.removesuffix(".alias.json").rpartition("-seed")
        for r in [r for r in found if r["dataset"] == alias.parent.name and r["candidate"] == "standard"]:
            if r["seed"] == int(seed):
                found.append({**r, "candidate": candidate, "same_as": "standard"})
    for dataset in {r["dataset"] for r in found}:  # standard = default where the check kept it
        for r in [r for r in found if r["dataset"] == dataset and r["candidate"] == "default"]:
            have = any(
                (x["dataset"], x["candidate"], x["seed"]) == (dataset, "standard", r["seed"]) for x in found
            )
            if not have and same_as_default(dataset, "standard", r["seed"]):
                found.append({**r, "candidate": "standard", "same_as": "default"})
    return found


def _ms(values: list[float], scale: float = 100.0) -> str:
    """mean +- sd: points for accuracies (``scale`` 100), three decimals for AUC (``scale`` 1)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    sd = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    digits = 1 if scale == 100.0 else 3
    return f"{mean:.{digits}f} +- {sd:.{digits}f}"


def same(got: list[dict]) -> str:
    shared = sorted({r["same_as"] for r in got if r.get("same_as")})
    return f" (= {', '.join(shared)} in {sum(1 for r in got if r.get('same_as'))} seeds)" if shared else ""


def cmd_table(args) -> None:
    table = rows()
    lines = [
        "| dataset | candidate | seeds | probe (phase 1) | final | gain | final AUC | vs default (paired) "
        "| opening | trough | augmentation | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in DATASETS:
        per = [r for r in table if r["dataset"] == dataset]
        default = {r["seed"]: r for r in per if r["candidate"] == "default"}
        for candidate in CANDIDATES:
            got = sorted((r for r in per if r["candidate"] == candidate), key=lambda r: r["seed"])
            if not got:
                continue
            paired = [r["final_acc"] - default[r["seed"]]["final_acc"] for r in got if r["seed"] in default]
            aug = sorted({r["augment"] or "-" for r in got})
            secs = [r["seconds"] for r in got if r.get("seconds") is not None]
            lines.append(
                f"| {dataset} | {candidate}{same(got)} | {len(got)} "
                f"| {_ms([r['probe_acc'] for r in got])} | {_ms([r['final_acc'] for r in got])} "
                f"| {_ms([r['gain'] for r in got])} | {_ms([r['final_auc'] for r in got], 1.0)} "
                f"| {_ms(paired) if candidate != 'default' else ''} "
                f"| {_ms([r['opening'] for r in got])} | {_ms([r['trough'] for r in got])} "
                f"| {'; '.join(aug)} "
                f"| {statistics.fmean(secs):.0f} |"
                if secs
                else "| - |"
            )
    print("\n".join(lines))


def cmd_costs(args) -> None:
    """The augmentation check's cost of every op, alone, on each dataset (phase 1 solved first)."""
    import thaw
    from thaw.core.augment_policy import Policy
    from thaw.core.config import override
    from thaw.train import augment_check
    from thaw.train.recipe import quiet_lightning
    from thaw.weights.install import install

    quiet_lightning()
    install("mobilenet_v2", log=lambda *_: None)
    every = Policy(crop=0.5, hflip=True, vflip=True, rot90=True, affine=True, color=True, trivial=True)
    for dataset in args.datasets:
        make_data([dataset])
        out = OUT / "costs" / dataset
        cfg = override(config(dataset, "default", 0, out), {"phase2.epochs": 0, "data.augment": "none"})
        if not (out / "summary.json").is_file():
            thaw.fit(cfg, quiet=True)
        model = thaw.load(out).model
        from thaw import data as thaw_data

        sources = thaw_data.discover(override(cfg, {"data.split_file": str(out / "split.csv")}).data)
        decoded = thaw_data.decode_sources(
            sources, model.preprocessing, model.spec.in_channels, warn=lambda *_: None
        )
        _, record = augment_check.check(model, every, decoded["train"], seed=0, channels_last=True)
        print(json.dumps({"dataset": dataset, **record}), flush=True)


def diagnose(callback, name: str) -> None:
    """``python bench/X.py DATASET CANDIDATE SEED``: that suite run (128 px column) into
    ``bench/out/diag/<name>``, afresh, with ``callback()`` added to phase 2's callbacks (the diagnostics
    ``precise_check.py`` and ``opening_check.py``)."""
    import shutil

    import thaw
    from thaw.core.config import override
    from thaw.train import recipe

    original = recipe.batchnorm_callbacks

    def patched(plan, module, ctx):
        out = original(plan, module, ctx)
        return [*out, callback()] if plan.name == "phase2" else out

    recipe.batchnorm_callbacks = patched
    ds, cand, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = ROOT / "bench" / "out" / "diag" / name.format(ds=ds, cand=cand, seed=seed)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(str(out) + ".incomplete", ignore_errors=True)
    thaw.fit(override(config(ds, cand, seed, out), COLUMNS["128"][0]), quiet=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("run", "table", "costs"))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--candidates", nargs="+", default=["default", "standard", "none"], choices=CANDIDATES)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--no-alias", action="store_true", help="run a candidate even where it equals the default")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--column", choices=COLUMNS, default="64", help="64: 64 px, 6 epochs; 128: the user's")
    args = p.parse_args()
    global OUT
    BASE.update(COLUMNS[args.column][0])
    OUT = ROOT / "bench" / "out" / COLUMNS[args.column][1]
    missing = [d for d in args.datasets if d != "digits" and not (SHARED.exists())]
    if missing:
        sys.exit(f"skipped: {', '.join(missing)}: {SHARED} is absent")
    {"run": cmd_run, "table": cmd_table, "costs": cmd_costs}[args.mode](args)


if __name__ == "__main__":
    main()
