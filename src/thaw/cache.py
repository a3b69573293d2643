"""One content-addressed cache entry (features, prefix activations, decoded images), shared by every
process that uses ``THAW_HOME``: several ``thaw fit`` at once, DDP ranks, nodes on a shared file system.

An entry ``<root>/<key>/`` is written by one process at a time, the holder of its lock file (in
``<root>/../.locks/``, so the cache folders hold entries alone; a
real file lock, ``filelock``: released by the kernel when its holder dies, and seen by other machines on
file systems that honour locks), into ``<root>/<key>.partial/``; its files are flushed to disk and the
folder renamed into place, so an entry either is complete or is not there. A process that finds no entry
takes the lock, looks again (another may have just written it), and only then computes. A leftover
``.partial`` folder is removed only by a process that holds its lock: never one another process (on this
machine or another) is still writing, whatever its process id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from thaw.files import fsync_dir, fsync_tree

PARTIAL = ".partial"


def partial_path(folder: Path) -> Path:
    return folder.with_name(folder.name + PARTIAL)


def lock_path(folder: Path) -> Path:
    """``<root>/../.locks/<root name>-<key>.lock``: one lock file per entry, outside the entries' folder."""
    locks = folder.parent.parent / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return locks / f"{folder.parent.name}-{folder.name}.lock"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Hold the entry's lock (waiting for another writer to finish) and yield its empty staging folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path(folder))):
        partial = partial_path(folder)
        shutil.rmtree(partial, ignore_errors=True)  # a holder that died: nobody else can be writing it
        try:
            yield partial
        finally:
            shutil.rmtree(partial, ignore_errors=True)


def publish(partial: Path, folder: Path) -> None:
    """Flush the staged entry to disk and rename it into place (called with the lock held)."""
    fsync_tree(partial)
    shutil.rmtree(folder, ignore_errors=True)  # an incomplete entry, found under the lock
    os.replace(partial, folder)
    fsync_dir(folder.parent)


def sweep(root: Path) -> None:
    """Remove ``.partial`` folders whose writer is gone: each one whose lock can be taken at once."""
    for partial in root.glob(f"*{PARTIAL}") if root.is_dir() else ():
        folder = partial.with_name(partial.name.removesuffix(PARTIAL))
        try:
            with FileLock(str(lock_path(folder)), timeout=0):
                shutil.rmtree(partial, ignore_errors=True)
        except Timeout:  # being written now, here or on another machine
            pass
