"""Shared caches under concurrency: two real processes computing the same entry take turns under its file
lock (one computes, the other waits and reads the same entry), and a staging folder is removed only by a
process that can take its lock, never one another process is still writing. The entry itself
(``thaw.core.cache.Entry``): a writer killed between its staged write and the rename leaves nothing that reads
as complete, and an entry with a corrupt or foreign ``meta.json`` is refused in one line and computed
again."""

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
ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}

WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import torch
    from torch import nn

    from thaw.data import features, store
    from thaw.data.images import eval_transform
    from thaw.data.sources import Item
    from thaw.core.preprocessing import Preprocessing

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
    from thaw.core import cache

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

    from thaw.core.cache import lock_path

    lock = FileLock(str(lock_path(__import__("pathlib").Path(sys.argv[1]))))
    lock.acquire()
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin
    """
)


def test_a_staging_folder_is_removed_only_when_its_writer_is_gone(tmp_path):
    from thaw.core import cache

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
    from thaw.core import cache

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
    from thaw.core import files

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


ENTRY = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path

    from thaw.core import cache

    root, mode, log, go = sys.argv[1:]

    def write(partial):
        with open(log, "a") as fh:  # one line per computation
            fh.write(f"{os.getpid()}\\n")
        time.sleep(1.0)  # long enough for the other process to arrive meanwhile
        (partial / "value.txt").write_text("42")
        return {"rows": 1}

    if mode == "crash":  # killed with the entry staged, meta.json and all, before its rename
        cache.publish = lambda partial, folder: os.kill(os.getpid(), signal.SIGKILL)
    while not Path(go).exists():
        time.sleep(0.01)
    read = lambda folder, meta: (folder / "value.txt").read_text()  # noqa: E731
    entry = cache.Entry(Path(root), {"what": "the answer"}, read, "a cache")
    value, computed = entry.get(write)
    print(json.dumps({"value": value, "computed": computed}))
    """
)


def _entry(root: Path):
    from thaw.core import cache

    return cache.Entry(root, {"what": "the answer"}, lambda f, m: (f / "value.txt").read_text(), "a cache")


def _write(partial: Path) -> dict:
    (partial / "value.txt").write_text("42")
    return {"rows": 1}


def _processes(tmp_path: Path, modes: list[str]) -> list[subprocess.Popen]:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ENTRY, str(tmp_path / "cache"), mode, str(tmp_path / "log"), str(go)],
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in modes
    ]
    time.sleep(0.3)
    go.touch()
    for p in procs:
        p.wait(timeout=60)
    return procs


def test_two_processes_filling_one_entry_compute_it_once(tmp_path):
    procs = _processes(tmp_path, ["fill", "fill"])
    assert [p.returncode for p in procs] == [0, 0], [p.stderr.read() for p in procs]
    results = [json.loads(p.stdout.read()) for p in procs]
    assert len((tmp_path / "log").read_text().splitlines()) == 1  # computed by one process only
    assert [r["value"] for r in results] == ["42", "42"]
    assert sorted(r["computed"] for r in results) == [False, True]  # the other waited and read it
    entry = _entry(tmp_path / "cache")
    assert json.loads((entry.folder / "meta.json").read_text()) == {"what": "the answer", "rows": 1}


def test_a_crash_between_the_staged_write_and_the_rename_leaves_no_complete_entry(tmp_path):
    from thaw.core import cache

    (proc,) = _processes(tmp_path, ["crash"])
    assert proc.returncode == -9  # SIGKILL, in publish
    entry = _entry(tmp_path / "cache")
    staged = cache.partial_path(entry.folder)
    assert (staged / "meta.json").is_file() and (staged / "value.txt").is_file()  # complete, but staged
    assert not entry.folder.exists() and entry.load() is None
    assert entry.get(_write) == ("42", True)  # computed again; the dead writer's lock died with it
    assert not staged.exists() and entry.get(_write) == ("42", False)


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda folder: (folder / "meta.json").write_text("{half a meta"), "meta.json is not JSON"),
        (lambda folder: (folder / "meta.json").write_text("[1, 2]"), "meta.json holds list, not an object"),
        (
            lambda folder: (folder / "meta.json").write_text('{"what": "another answer"}'),
            "meta.json describes another entry: its what differ",
        ),
        (lambda folder: (folder / "value.txt").unlink(), "No such file"),
    ],
    ids=["not json", "not an object", "foreign", "a file missing"],
)
def test_a_corrupt_or_foreign_entry_is_refused_in_one_line_and_computed_again(tmp_path, damage, why):
    entry = _entry(tmp_path / "cache")
    assert entry.get(_write) == ("42", True)
    damage(entry.folder)
    assert entry.load() is None and entry.folder.exists()  # without the lock: refused, left alone
    warnings = []
    assert entry.get(_write, warnings.append) == ("42", True)
    (warning,) = warnings
    assert f"a cache in {entry.folder} is corrupt (" in warning and why in warning and "\n" not in warning
    assert warning.endswith("; computing it again")
    assert entry.get(_write, warnings.append) == ("42", False) and len(warnings) == 1


def test_an_entry_that_cannot_be_read_back_is_one_clear_error(tmp_path):
    from thaw.core import cache
    from thaw.core.errors import ThawError

    def refuse(folder, meta):
        raise ValueError("3 rows, 2 labels")

    entry = cache.Entry(tmp_path / "cache", {"what": "x"}, refuse, "the feature cache", "--phase1 online")
    with pytest.raises(ThawError, match=r"could not be read back \(3 rows, 2 labels\); use --phase1 online"):
        entry.get(_write)


def test_the_key_is_the_identity_content_addressed():
    from thaw.core import cache

    assert cache.key({"a": 1, "b": [1, 2]}) == cache.key({"b": [1, 2], "a": 1})  # order does not matter
    assert cache.key({"a": 1}) != cache.key({"a": 2}) and len(cache.key({"a": 1})) == 32
