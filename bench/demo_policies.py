"""The demo's config (``thaw.studies.demo``) under each batch-norm policy, seeds paired (issue 25).

    python bench/demo_policies.py [--seeds 0 1 2] [--policies matched frozen matched-ema] [--out DIR]

``matched-ema`` is ``matched`` validated on the moving average of its statistics (``--bn-precise-batches
0``), as the sixth stop ran it.

Prints one JSON line per run: phase 1's validation and test accuracy, phase 2's validation accuracy by
epoch, the final test accuracy and which phase was kept. Accuracy only: run it alone for the seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import thaw
from thaw.core.config import override
from thaw.studies import demo

POLICIES = {
    "matched": {"bn_policy": "matched"},
    "frozen": {"bn_policy": "frozen"},
    "matched-ema": {"bn_policy": "matched", "bn_precise_batches": 0},
    "train": {"bn_policy": "train"},
    "tracked": {"bn_policy": "tracked"},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--policies", nargs="+", default=["matched", "frozen"], choices=list(POLICIES))
    p.add_argument("--out", default=None, help="folder for the run folders (default: a temporary one)")
    args = p.parse_args()
    root = args.out or tempfile.mkdtemp(prefix="demo-policies-")
    for seed in args.seeds:
        for bn in args.policies:
            cfg = override(demo.config(f"{root}/{bn}-seed{seed}", seed), POLICIES[bn])
            s = thaw.fit(cfg, quiet=True).summary
            p1, p2 = s.phases["phase1"], s.phases["phase2"]
            row = {
                "seed": seed,
                "bn_policy": bn,
                "phase1_val": round(p1.val.accuracy, 4),
                "phase1_test": round(p1.test.accuracy, 4),
                "phase2_val_by_epoch": [round(float(e["val_acc"]), 4) for e in p2.epochs],
                "final_phase": s.final_phase,
                "final_test": round(s.final.test.accuracy, 4),
            }
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
