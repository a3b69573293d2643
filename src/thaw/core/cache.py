"""One content-addressed cache entry (features, prefix activations, decoded images), shared by every
process that uses ``THAW_HOME``: several ``thaw fit`` at once, DDP ranks, nodes on a shared file system.

An :class:`Entry` is named by what determines its content: ``<root>/<key>/``, ``key`` a hash of its
``identity`` (a JSON dict: any change to what the content depends on gives another entry, so a stale one is
never read). It holds its files and ``meta.json`` (the identity and what the writer adds), written last.
An entry is written by one process at a time, the holder of its lock file (in ``<root>/../.locks/``, so
the cache folders hold entries alone; a real file lock, ``filelock``: released by the kernel when its holder
dies, and seen by other machines on file systems that honour locks), into ``<root>/<key>.partial/``; its
files are flushed to disk and the folder renamed into place, so an entry either is complete or is not
there. A process that finds no entry takes the lock, looks again (another may have just written it), and
only then computes: one computes, the others wait and read. An entry whose ``meta.json`` is unreadable,
names another identity, or whose files its reader refuses is reported in one line and computed again.
A leftover ``.partial`` folder is removed only by a process that holds its lock: never one another process
(on this machine or another) is still writing, whatever its process id.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from filelock import FileLock, Timeout

from thaw.core.errors import ThawError
from thaw.core.files import fsync_dir, fsync_tree

PARTIAL = ".partial"
META = "meta.json"
# what a reader raises for an entry it refuses: missing or unreadable files, shapes that disagree
CORRUPT = (OSError, EOFError, ValueError, KeyError, TypeError)

T = TypeVar("T")


def root(kind: str) -> Path:
    """Where ``kind``'s entries live: ``$THAW_HOME/cache/<kind>`` (``THAW_HOME``: ``~/.cache/thaw``)."""
    return Path(os.environ.get("THAW_HOME") or "~/.cache/thaw").expanduser() / "cache" / kind


def key(identity: dict) -> str:
    """The entry's name: a hash of its identity (JSON, keys sorted)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]


def digest(text: str) -> str:
    """A short hash of ``text``, for an identity field too long to keep as it is (labels, keys)."""
    return hashlib.blake2b(text.encode()).hexdigest()


def warn_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


@dataclass(frozen=True)
class Entry(Generic[T]):
    """The entry of ``identity`` in the folder ``root``. ``read(folder, meta)`` turns a complete entry's files
    into its value and raises one of :data:`CORRUPT` (with why) for files it refuses; ``what`` names the
    cache in messages ("the feature cache"); ``way_out``: the flag that avoids the cache, named when it
    cannot be written (None: there is none)."""

    root: Path
    identity: dict
    read: Callable[[Path, dict], T]
    what: str
    way_out: str | None = None

    @property
    def folder(self) -> Path:
        return self.root / key(self.identity)

    def get(self, write: Callable[[Path], dict], warn: Callable[[str], None] = warn_stderr) -> tuple[T, bool]:
        """The entry's value, and whether this call computed it. Computed when absent or refused:
        ``write(staging)`` fills an empty staging folder and returns what ``meta.json`` adds to the
        identity; only the holder of the entry's lock writes it."""
        found = self.load()  # a complete entry needs no lock: it is never rewritten
        if found is not None:
            return found, False
        try:
            with locked(self.folder) as partial:  # another process computing this entry: wait for it
                found = self.load(warn)
                if found is not None:
                    return found, False
                sweep(self.root)
                partial.mkdir(parents=True)
                meta = {**self.identity, **write(partial)}
                (partial / META).write_text(json.dumps(meta))  # last: an entry with it is complete
                publish(partial, self.folder)
        except OSError as err:
            raise ThawError(
                f"cannot write {self.what} in {self.root} ({err.strerror or err}): set THAW_HOME to a "
                f"writable folder with free space" + (f", or use {self.way_out}" if self.way_out else "")
            ) from err
        try:
            return self.checked(), True
        except CORRUPT as err:
            fix = f"use {self.way_out}" if self.way_out else "delete it and run again"
            raise ThawError(f"{self.what} in {self.folder} could not be read back ({err}); {fix}") from err

    def load(self, warn: Callable[[str], None] | None = None) -> T | None:
        """The complete entry's value, or None. ``warn`` (only with the entry's lock held): an incomplete
        entry is removed, a refused one reported and removed, to be computed again."""
        if not (self.folder / META).is_file():
            if warn is not None and self.folder.exists():  # no meta.json: half-written (by an older thaw)
                shutil.rmtree(self.folder, ignore_errors=True)
            return None
        try:
            return self.checked()
        except CORRUPT as err:
            if warn is not None:
                warn(f"{self.what} in {self.folder} is corrupt ({err}); computing it again")
                shutil.rmtree(self.folder, ignore_errors=True)
            return None

    def checked(self) -> T:
        """The entry's value, its ``meta.json`` checked to be this identity's; raises one of
        :data:`CORRUPT`."""
        try:
            meta = json.loads((self.folder / META).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{META} is not JSON: {err}") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{META} holds {type(meta).__name__}, not an object")
        expected = json.loads(json.dumps(self.identity))  # as JSON reads it back: tuples are lists
        differs = sorted(name for name, value in expected.items() if meta.get(name) != value)
        if differs:
            raise ValueError(f"{META} describes another entry: its {', '.join(differs)} differ")
        return self.read(self.folder, meta)


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


def sweep(entries: Path) -> None:
    """Remove ``.partial`` folders in ``entries`` whose writer is gone: each one whose lock can be taken at
    once."""
    for partial in entries.glob(f"*{PARTIAL}") if entries.is_dir() else ():
        folder = partial.with_name(partial.name.removesuffix(PARTIAL))
        try:
            with FileLock(str(lock_path(folder)), timeout=0):
                shutil.rmtree(partial, ignore_errors=True)
        except Timeout:  # being written now, here or on another machine
            pass
