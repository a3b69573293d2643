"""Faults at random (seeded) points of a tiny run: SIGKILL and Ctrl-C (SIGINT) mid-batch or at a file
write, and a full disk (``OSError(ENOSPC)``) at a write. After each, every file in the run folder is whole,
and ``thaw resume`` ends with exactly the metrics and model of an uninterrupted run."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from conftest import tiny_flags
from safetensors.torch import load_file
from zygote import run_thaw

from thaw.cli import main

ARGS = [
    *tiny_flags(32, batch=4),
    "--lr",
    "0.01",
    "--phase1-epochs",
    "2",
    "--phase2-epochs",
    "2",
    "--patience",
    "5",
    "--unfreeze",
    "2",
    "--phase1",
    "online",
    "--quiet",
]

# `thaw fit` in a subprocess that sends itself a signal at one point: after a training batch, or just
# before the n-th atomic write is renamed into place (its temporary file complete, the target untouched).
FAULT = """
import os, signal, sys
from thaw.train import module
how, where, phase, epoch, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
sig = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}[how]
# Ctrl-C as a terminal delivers it, even when the suite runs in the background (`cmd &`), where the shell
# starts its children with SIGINT ignored and Python then never raises KeyboardInterrupt
signal.signal(signal.SIGINT, signal.default_int_handler)

def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
    if self.phase == phase and trainer.current_epoch + 1 == epoch and batch_idx == batch:
        os.kill(os.getpid(), sig)

if where == "batch":
    module.EpochRecorder.on_train_batch_end = on_train_batch_end
else:
    replace, count = os.replace, [0]
    def counted(src, dst, *a, **k):
        if str(src).endswith(".tmp"):
            count[0] += 1
            if count[0] == batch:
                os.kill(os.getpid(), sig)
        return replace(src, dst, *a, **k)
    os.replace = counted
from thaw.cli import main
sys.exit(main(sys.argv[6:]))
"""


def _writes_counted(argv: list[str]) -> tuple[int, int]:
    """Run ``thaw`` in-process, counting atomic writes; (exit code, number of writes)."""
    replace, count = os.replace, [0]

    def counted(src, dst, *a, **k):
        count[0] += str(src).endswith(".tmp")
        return replace(src, dst, *a, **k)

    with mock.patch("os.replace", counted):
        code = main(argv)
    return code, count[0]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    from conftest import make_class_folder

    root = tmp_path_factory.mktemp("faults")
    data = make_class_folder(root / "shapes", per_class=6)
    out = root / "whole"
    code, writes = _writes_counted(["fit", str(data), *ARGS, "--out", str(out)])
    assert code == 0
    return data, out, writes


def fault_points(writes: int, n: int = 10, seed: int = 10) -> list[tuple]:
    """``n`` seeded points: half after a random training batch, half at a random write, each with
    SIGKILL or SIGINT."""
    rng = random.Random(seed)
    points = []
    for i in range(n):
        how = ("kill", "int")[i % 2]
        if i < n // 2:
            points.append(
                (how, "batch", rng.choice(["phase1", "phase2"]), rng.randint(1, 2), rng.randint(0, 1))
            )
        else:
            points.append((how, "write", "-", 0, rng.randint(1, writes)))
    return points


def whole_files(run: Path) -> None:
    """Every file in the run folder parses completely (temporary files of an interrupted write aside)."""
    for f in run.rglob("*"):
        if not f.is_file() or f.name.endswith(".tmp"):
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".yaml":
            yaml.safe_load(f.read_text())
        elif f.suffix == ".csv":
            rows = list(csv.reader(f.open()))
            assert rows and all(len(r) == len(rows[0]) for r in rows), f
        elif f.suffix == ".safetensors":
            load_file(str(f))
        elif f.suffix == ".ckpt":
            torch.load(f, map_location="cpu", weights_only=False)
        elif f.suffix == ".png":
            from PIL import Image

            Image.open(f).load()


def outcome(run: Path) -> dict:
    from test_resume import outcome as measured

    return measured(run)


def same_run(ours: Path, theirs: Path) -> None:
    assert outcome(ours) == outcome(theirs)
    a, b = load_file(str(ours / "model.safetensors")), load_file(str(theirs / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow  # ten runs in processes of their own (forked from a preloaded one: tests/zygote.py)
def test_killed_or_interrupted_at_seeded_points_then_resumed(whole, tmp_path, capsys):
    data, uninterrupted, writes = whole
    points = fault_points(writes)
    assert len(points) >= 10
    for i, (how, where, phase, epoch, n) in enumerate(points):
        out = tmp_path / f"run{i}"
        argv = [how, where, phase, str(epoch), str(n), "fit", str(data), *ARGS, "--out", str(out)]
        done = run_thaw(argv, code=FAULT)
        staging = out.with_name(out.name + ".incomplete")
        point = f"{how} at {where} {phase} {epoch} {n}"
        started = (staging / "split.csv").is_file()
        if how == "kill":
            assert done.returncode == -signal.SIGKILL, (point, done.stderr[-2000:])
        else:  # Ctrl-C: one line that says where the run is and how to continue it, when it can be
            assert done.returncode == 130, (point, done.stderr[-2000:])
            last = done.stderr.strip().splitlines()[-1]
            hint = f"thaw resume {staging}" if started else "nothing to resume"
            assert last.startswith("thaw: interrupted") and hint in last, (point, last)
            assert "Traceback" not in done.stderr
        assert staging.is_dir() and not out.exists(), point
        whole_files(staging)
        code = main(["resume", str(staging), "--quiet"])
        err = capsys.readouterr().err
        if not started:  # stopped before the run started: nothing to continue
            assert code == 2 and "interrupted before it started" in err, (point, err)
            continue
        assert code == 0, (point, err)
        assert not staging.exists() and not list(out.rglob("*.tmp")), point
        same_run(out, uninterrupted)


def test_sigterm_in_training_exits_143_and_resumes(whole, tmp_path, capsys):
    """Lightning turns SIGTERM (a scheduler preempting the job) into a SystemExit with code 0; thaw must
    not report a stopped run as a success."""
    data, uninterrupted, _ = whole
    out = tmp_path / "term"
    argv = ["term", "batch", "phase2", "1", "0", "fit", str(data), *ARGS, "--out", str(out)]
    done = run_thaw(argv, code=FAULT)
    staging = out.with_name(out.name + ".incomplete")
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("thaw: terminated (SIGTERM)") and f"thaw resume {staging}" in last, last
    assert staging.is_dir() and not out.exists()
    assert main(["resume", str(staging), "--quiet"]) == 0, capsys.readouterr().err
    same_run(out, uninterrupted)


def disk_full_at(n: int, staging: Path, before: dict[Path, bytes]):
    """An ``os.replace`` whose n-th atomic write fails with ENOSPC, first noting every file already there
    (``before``): they must survive the failed write untouched."""
    replace, count = os.replace, [0]

    def full(src, dst, *args, **kwargs):
        if str(src).endswith(".tmp"):
            count[0] += 1
            if count[0] == n:
                files = [f for f in staging.rglob("*") if f.is_file() and f.suffix != ".tmp"]
                before.update({f: f.read_bytes() for f in files})
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return replace(src, dst, *args, **kwargs)

    return full


def test_full_disk_at_seeded_writes_loses_nothing_written_before(whole, tmp_path, capsys):
    data, uninterrupted, writes = whole
    rng = random.Random(28)
    for n in sorted(rng.sample(range(4, writes + 1), 3)):
        out = tmp_path / f"full{n}"
        staging = out.with_name(out.name + ".incomplete")
        before: dict[Path, bytes] = {}
        with mock.patch("os.replace", disk_full_at(n, staging, before)):
            code = main(["fit", str(data), *ARGS, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2, (n, err)
        assert err[-1].startswith("thaw: error: No space left on device") and "thaw resume" in err[-1], err
        assert {f: f.read_bytes() for f in before} == before, n
        assert not list(staging.rglob("*.tmp"))
        whole_files(staging)
        assert main(["resume", str(staging), "--quiet"]) == 0, capsys.readouterr().err
        same_run(out, uninterrupted)
