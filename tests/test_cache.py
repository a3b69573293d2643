"""Shared caches under concurrency: two real processes computing the same entry take turns under its file
lock (one computes, the other waits and reads the same entry), and a staging folder is removed only by a
process that can take its lock, never one another process is still writing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import make_class_folder

SRC = Path(__file__).resolve().parents[1] / "src"

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import torch
    from torch import nn

    from thaw.data import features, store
    from thaw.data.images import eval_transform
    from thaw.data.sources import Item
    from thaw.preprocessing import Preprocessing

    kind, root, go, out, *paths = sys.argv[1:]
    pre = Preprocessing(16, 16, (0.5,) * 3, (0.25,) * 3)
    items = [Item(p, i % 2) for i, p in enumerate(paths)]
    slow_compute, slow_write = features.compute, store._write

    def compute(*args, **kwargs):  # long enough for the other process to arrive meanwhile
        time.sleep(1.5)
        return slow_compute(*args, **kwargs)

    def write(*args, **kwargs):
        time.sleep(1.5)
        return slow_write(*args, **kwargs)

    features.compute, store._write = compute, write
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    while not Path(go).exists():  # both processes start together
        time.sleep(0.01)
    if kind == "features":
        f = features.features(backbone, items, eval_transform(pre), {"kind": "eval"}, pre, 3, root=Path(root))
        result = {"computed": not f.cached, "sum": float(f.x.sum()), "rows": len(f.keys)}
    else:
        decoded, failed = store.decode_to_disk(items, pre, 3, strict=False, root=Path(root))
        total = sum(int(im.sum()) for im in decoded.images)
        result = {"computed": None, "sum": total, "rows": len(decoded.keys)}
    Path(out).write_text(json.dumps(result))
    """
)


@pytest.mark.parametrize("kind", ["features", "store"])
def test_two_processes_computing_one_entry_take_turns(tmp_path, kind):
    from thaw import cache

    data = make_class_folder(tmp_path / "d", per_class=3)
    paths = sorted(str(p) for p in data.rglob("*.png"))
    root, go = tmp_path / "cache", tmp_path / "go"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), kind, str(root), str(go), str(tmp_path / f"{n}.json"), *paths],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        assert p.wait(timeout=240) == 0, p.stderr.read()
    results = [json.loads((tmp_path / f"{n}.json").read_text()) for n in range(2)]
    assert results[0]["sum"] == results[1]["sum"] and results[0]["rows"] == results[1]["rows"] == 6
    if kind == "features":
        assert sorted(r["computed"] for r in results) == [False, True]  # one computed, one read it
    (entry,) = root.iterdir()  # one entry, no staging folder left
    assert (entry / "meta.json").is_file() and cache.lock_path(entry).is_file()


HOLDER = textwrap.dedent(
    """
    import sys, time
    from filelock import FileLock

    from thaw.cache import lock_path

    lock = FileLock(str(lock_path(__import__("pathlib").Path(sys.argv[1]))))
    lock.acquire()
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
    """
)


def test_a_staging_folder_is_removed_only_when_its_writer_is_gone(tmp_path):
    from thaw import cache

    root = tmp_path / "cache"
    partial = cache.partial_path(root / "abc")
    partial.mkdir(parents=True)
    (partial / "x.npy").write_bytes(b"half written")
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root / "abc")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "held"
    cache.sweep(root)  # its writer holds the lock (whatever its process id, on whatever machine)
    assert (partial / "x.npy").is_file()
    writer.stdin.close()
    assert writer.wait(timeout=30) == 0
    cache.sweep(root)  # the lock died with its holder: the folder is an orphan
    assert not partial.exists()


def test_a_killed_writer_leaves_no_entry_and_the_next_one_completes_it(tmp_path):
    from thaw import cache

    folder = tmp_path / "cache" / "abc"
    with pytest.raises(RuntimeError):
        with cache.locked(folder) as partial:
            partial.mkdir()
            (partial / "x").write_text("half")
            raise RuntimeError("killed")
    assert not folder.exists() and not cache.partial_path(folder).exists()
    with cache.locked(folder) as partial:
        partial.mkdir()
        (partial / "meta.json").write_text("{}")
        cache.publish(partial, folder)
    assert (folder / "meta.json").read_text() == "{}"


def test_atomic_writes_flush_the_file_and_its_folder(tmp_path, monkeypatch):
    from thaw import files

    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    files.write_atomic(tmp_path / "a.json", "{}")
    assert (tmp_path / "a.json").read_text() == "{}"
    if os.path.exists("/proc/self/fd"):
        assert any(s.endswith(".a.json.tmp") or s.endswith(f"a.json.{os.getpid()}.tmp") for s in synced[:1])
        assert synced[-1] == str(tmp_path)  # the rename itself, flushed
    assert len(synced) == 2
