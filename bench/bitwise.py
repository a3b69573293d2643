"""Bitwise check of a refactor: fixed-seed runs whose summary.json must not change.

    python bench/bitwise.py record bench/bitwise_reference.json   # before
    python bench/bitwise.py check bench/bitwise_reference.json    # after: exit 1 on any difference

The runs: the demo (seed 0), and ``builtin:digits`` with three-plan strategies (wise-ft: the cached
probe, the cached-prefix fine-tune and the interpolation; gradual, every phase online). Wall-clock
fields (seconds, images per second), whether the features came from the shared cache (an earlier run
may have filled it) and the version are left out; the runs use one thread whatever ``OMP_NUM_THREADS``
says (at 2, the reference gave 470 differences from the same code); every metric, curve, epoch record,
learning rate and the saved model's sha256 are compared exactly (floats as their JSON text).

The reference belongs to the machine it was recorded on: the same code gave 497 differences on another
2-core machine (an AMD EPYC, 2026-12-07) than the one that recorded it, from the demo's first phase-2 step
on. Record the reference before a refactor on the machine that checks it after.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from thaw.core.results import without_clock

THAW = [str(Path(sys.executable).with_name("thaw"))]
DIGITS = [
    "builtin:digits",
    "--weights",
    "IMAGENET1K_V1",
    "--image-size",
    "32",
    "--seed",
    "0",
    "--quiet",
    "--phase1-epochs",
    "3",
    "--phase2-epochs",
    "2",
]
RUNS = {
    "demo": ["demo", "--seed", "0", "--quiet"],
    "wise-ft": ["fit", *DIGITS, "--strategy", "wise-ft"],
    "gradual-online": [
        "fit",
        *DIGITS,
        "--strategy",
        "gradual",
        "--gradual-every",
        "1",
        "--phase1",
        "online",
        "--phase2",
        "online",
    ],
}


def record() -> dict:
    found = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in RUNS.items():
            out = Path(tmp) / name
            env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as recorded: another count sums floats otherwise
            subprocess.run([*THAW, *argv, "--out", str(out)], check=True, env=env, stdout=subprocess.DEVNULL)
            found[name] = without_clock(json.loads((out / "summary.json").read_text()))
    return found


def differences(a, b, where="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    return (
        [] if json.dumps(a) == json.dumps(b) else [f"{where}: {json.dumps(a)[:80]} != {json.dumps(b)[:80]}"]
    )


def main() -> int:
    mode, path = sys.argv[1], Path(sys.argv[2])
    now = record()
    if mode == "record":
        path.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
        print(f"recorded {', '.join(now)} in {path}")
        return 0
    diff = differences(json.loads(path.read_text()), now)
    for line in diff[:40]:
        print(line)
    print(f"{len(diff)} difference(s) from {path} over {', '.join(now)}")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
