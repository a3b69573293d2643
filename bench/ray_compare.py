"""A 4-cell ``thaw compare`` (2 strategies x 2 seeds) run serially, then on a local Ray with 2 one-CPU
workers: both wall times, their ratio (issue 21's target: at most 0.6x on a 2-core machine) and whether
every cell's summary.json is the same (wall-clock fields left out; the saved model's sha256 included).

    OMP_NUM_THREADS=1 python bench/ray_compare.py                      # digits, MobileNetV2, 64 px
    OMP_NUM_THREADS=1 python bench/ray_compare.py --model mobilenet_v3_small --weights none \\
        --image-size 32 --phase2-epochs 1                              # a tiny proof that it runs

Both studies run every cell with one torch thread (``--cell-cpus 1``), each in its own fresh folder; the
feature cache is a fresh ``THAW_HOME`` per study, so neither reads what the other computed. Run it alone
on the machine: the ratio means nothing on a loaded one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from thaw.core.results import without_clock


def study(argv: list[str], out: Path, home: Path, extra: list[str]) -> tuple[float, dict]:
    from thaw.cli import main

    os.environ["THAW_HOME"] = str(home)
    start = time.perf_counter()
    code = main([*argv, "--out", str(out), *extra])
    seconds = time.perf_counter() - start
    if code:
        sys.exit(f"thaw compare exited with {code}")
    runs = json.loads((out / "results.json").read_text())["runs"]
    return seconds, {(r["strategy"], r["seed"]): without_clock(r["summary"]) for r in runs}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="builtin:digits")
    p.add_argument("--strategies", default="two-phase,finetune-low-lr")
    p.add_argument("--model", default="mobilenet_v2")
    p.add_argument("--weights", default="IMAGENET1K_V1")
    p.add_argument("--image-size", default="64")
    p.add_argument("--phase2-epochs", default="2")
    p.add_argument("--workers", type=int, default=2, help="Ray CPUs, one cell each")
    args = p.parse_args()
    argv = ["compare", args.data, "--strategies", args.strategies, "--seeds", "2", "--model", args.model]
    argv += [
        "--weights",
        args.weights,
        "--image-size",
        args.image_size,
        "--phase2-epochs",
        args.phase2_epochs,
    ]
    argv += ["--cell-cpus", "1"]
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        serial_s, serial = study(argv, root / "serial", root / "home-serial", [])
        os.environ["THAW_HOME"] = str(root / "home-ray")  # the Ray workers inherit it
        ray.init(num_cpus=args.workers, include_dashboard=False)
        try:
            ray_s, parallel = study(argv, root / "ray", root / "home-ray", ["--executor", "ray"])
        finally:
            ray.shutdown()
    same = serial == parallel
    print(f"serial, one thread per run:      {serial_s:8.1f} s")
    print(f"Ray, {args.workers} one-CPU workers:         {ray_s:8.1f} s  (includes starting the workers)")
    print(f"ratio Ray / serial:              {ray_s / serial_s:8.2f}x  (target <= 0.6x)")
    print(f"per-cell results identical:      {same}  ({len(serial)} cells)")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
