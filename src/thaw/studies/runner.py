"""One study runner for ``thaw compare``, ``thaw curve``, ``thaw fit --folds`` and ``--strategy auto``.

A study is a list of :class:`Cell` s: each an ordinary thaw run folder to make (a name, the folder, the
config, and the sources when the study made its own split). :func:`run_cells` skips the finished ones,
resumes the interrupted ones from their last checkpoint (``thaw resume``), runs the rest, and returns their
summaries; a study only lists its cells and builds its table from what comes back.

The cells run one after another in this process (``--executor local``), or as Ray tasks
(``--executor ray``), each with the CPUs and GPUs it declares (``--cell-cpus``, ``--cell-gpus``), on a Ray
started here or the cluster at ``--address``. Every cell writes its run folder where the study says, so on
a cluster that folder must be on a file system every node sees. A worker lost mid-cell is retried by Ray
(``max_retries``) and the retry finds the cell's interrupted run folder and resumes it. A cell runs with as
many torch threads as ``--cell-cpus`` on either executor, so the same cell gives the same numbers on both.

A cell with ``--devices N > 1`` (or ``--num-nodes``) runs as its own ``python -m thaw.cli`` process, from
which Lightning's launcher starts the other ranks as it does under ``thaw fit`` (a Ray task's own process
is not a script Lightning can start again); the Ray task holds the resources of every rank.

:func:`thaw.metrics.stats.interval` is the one mean +- sd (and 95% CI) of a study's tables; :data:`METRICS`
the one registry of the metric columns a run contributes to them.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from thaw.core.config import RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.results import RunSummary
from thaw.core.run_folder import START_FILES, SUMMARY, final_path, staging_path
from thaw.use import run as recipe

EXECUTORS = ("local", "ray")
INSTALL_RAY = "--executor ray needs Ray: install thaw-transfer[ray] (pip install 'thaw-transfer[ray]')"


@dataclass(frozen=True)
class Cell:
    """One run of a study: ``label`` names it on the console, ``path`` is its run folder (final name),
    ``config`` its settings (its ``out`` is set to ``path``), ``sources`` the split a study made itself
    (folds), ``cost`` its share of the work, for the time left."""

    label: str
    path: Path
    config: RunConfig
    sources: Any = None
    cost: float = 1.0

    @property
    def done(self) -> bool:
        return (self.path / SUMMARY).is_file()


@dataclass(frozen=True)
class Executor:
    """Where the cells run: ``local`` (here, one after another) or ``ray`` (tasks on the Ray at
    ``address``: ``auto`` an existing cluster, ``HOST:PORT`` its head, ``None`` a Ray started here), and
    what each cell declares: ``cpus`` (also its torch threads; ``None``: local leaves the threads as they
    are, Ray gives 1), ``gpus`` and ``retries`` (a lost worker's cell is run again this often)."""

    kind: str = "local"
    address: str | None = None
    cpus: int | None = None
    gpus: float = 0.0
    retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ThawError(f"--executor {self.kind}: choose local or ray")
        if self.cpus is not None and self.cpus < 1:
            raise ThawError(f"--cell-cpus {self.cpus} must be at least 1")
        if self.gpus < 0:
            raise ThawError(f"--cell-gpus {self.gpus} must be 0 or more")
        if self.kind == "local" and self.address is not None:
            raise ThawError("--address names a Ray cluster: give it with --executor ray")

    def check(self) -> Executor:
        """Ray importable and reachable now, before a study writes anything (else one line)."""
        if self.kind == "ray":
            connect(_ray(), self.address)
        return self

    @property
    def threads(self) -> int | None:
        return self.cpus if self.cpus is not None or self.kind == "local" else 1


# ------------------------------------------------------------------------------------------ one cell


def run_cell(cell: Cell, threads: int | None = None) -> float:
    """Make ``cell``'s run folder: nothing when it is finished, ``resume`` when it was interrupted after it
    started, else ``fit`` (a staging folder killed before its start files is deleted: nothing in it).
    Returns the seconds it took."""
    start = time.monotonic()
    if cell.done:
        return 0.0
    staged = staging_path(cell.path)
    begun = staged.is_dir() and all((staged / n).is_file() for n in START_FILES)
    if staged.is_dir() and not begun:
        shutil.rmtree(staged)
    hardware = cell.config.hardware
    with _threads(threads):
        if hardware.devices > 1 or hardware.num_nodes > 1:
            _launch(cell, begun, threads)
        elif begun:
            recipe.resume(staged, quiet=True)
        else:
            recipe.fit(override(cell.config, {"out": str(cell.path)}), sources=cell.sources, quiet=True)
    return time.monotonic() - start


@contextmanager
def _threads(n: int | None):
    """torch's intra-op threads set to ``n`` while a cell runs (the thread count can change the last bits
    of a reduction: a cell gets the same numbers wherever it runs with the same ``n``)."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _launch(cell: Cell, begun: bool, threads: int | None) -> None:
    """A multi-device cell as its own ``thaw`` process: Lightning's launcher starts the other ranks by
    running that command again, as under ``thaw fit --devices N``."""
    if begun:
        argv = ["resume", str(staging_path(cell.path)), "--quiet"]
    else:
        config = override(cell.config, {"out": str(cell.path)})
        if cell.sources is not None:  # the study's own split, as a file the process reads
            from thaw import data as thaw_data  # a multi-device cell only

            split = cell.path.with_name(cell.path.name + ".split.csv")
            thaw_data.write_split(cell.sources, split)
            config = override(config, {"data.split_file": str(split)})
        yaml_file = cell.path.with_name(cell.path.name + ".config.yaml")
        yaml_file.parent.mkdir(parents=True, exist_ok=True)
        yaml_file.write_text(config.to_yaml())
        argv = ["fit", "--config", str(yaml_file), "--quiet"]
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    done = subprocess.run([sys.executable, "-m", "thaw.cli", *argv], env=env, check=False)
    if done.returncode != 0:
        raise ThawError(f"{cell.label}: the multi-device run in {cell.path} exited with {done.returncode}")


# ------------------------------------------------------------------------------------------ a study


def run_cells(
    cells: list[Cell], executor: Executor | None = None, say: Callable[[str], None] = print
) -> dict:
    """Run (or finish) every cell; returns ``{cell path: seconds}`` of the cells run now (0 for a cell
    finished before). Read the results with :func:`summaries`."""
    executor = executor or Executor()
    todo = [c for c in cells if not c.done]
    seconds = {c.path: 0.0 for c in cells}
    if not todo:
        return seconds
    progress = _Progress(cells, todo, say)
    if executor.kind == "ray":
        seconds.update(_run_on_ray(todo, executor, progress))
        return seconds
    for cell in todo:
        say(f"[{cells.index(cell) + 1}/{len(cells)}] {cell.label}")
        seconds[cell.path] = run_cell(cell, executor.threads)
        progress.done(cell, seconds[cell.path])
    return seconds


def summaries(cells: list[Cell]) -> list[RunSummary]:
    return [RunSummary.read(final_path(c.path)) for c in cells]


class _Progress:
    """One line per finished cell, with the time left estimated from the cells' costs."""

    def __init__(self, cells: list[Cell], todo: list[Cell], say: Callable[[str], None]) -> None:
        self.cells, self.say, self.start = cells, say, time.monotonic()
        self.total, self.finished = sum(c.cost for c in todo) or 1.0, 0.0

    def done(self, cell: Cell, seconds: float) -> None:
        self.finished += cell.cost
        spent = time.monotonic() - self.start
        left = spent * (self.total - self.finished) / max(self.finished, 1e-9)
        n = self.cells.index(cell) + 1
        self.say(
            f"[{n}/{len(self.cells)}] {cell.label}: done in {seconds:.0f}s, about {left / 60:.0f} min left"
        )


# ------------------------------------------------------------------------------------------ Ray


def _run_on_ray(cells: list[Cell], executor: Executor, progress: _Progress) -> dict:
    """Every cell a Ray task holding its resources; a task whose worker died is retried and resumes."""
    ray = _ray()
    executor.check()
    threads = executor.threads
    task = ray.remote(_in_folder)
    refs = {}
    for cell in cells:
        cpus, gpus = resources(cell, executor)
        options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": executor.retries}
        refs[task.options(**options, retry_exceptions=False).remote(os.getcwd(), cell, threads)] = cell
    seconds, pending = {}, list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        cell = refs[ready[0]]
        try:
            seconds[cell.path] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as err:
            for ref in pending:
                ray.cancel(ref)
            cause = err.as_instanceof_cause()
            if isinstance(cause, ThawError):
                raise ThawError(f"{cell.label}: {cause}") from None
            raise
        progress.done(cell, seconds[cell.path])
    return seconds


def _in_folder(cwd: str, cell: Cell, threads: int | None) -> float:
    """A Ray task: the cell run from the study's working folder, so that the relative paths of its config
    (the data, ``--out``) mean what they mean to the study (on a cluster: a folder every node sees)."""
    os.chdir(cwd)
    return run_cell(cell, threads)


def resources(cell: Cell, executor: Executor) -> tuple[float, float]:
    """(CPUs, GPUs) a cell's task holds: a multi-device CPU cell one CPU per rank at least."""
    hw = cell.config.hardware
    cpus = executor.cpus or 1
    if hw.accelerator == "cpu":
        cpus = max(cpus, hw.devices)
    return float(cpus), float(executor.gpus)


def _ray():
    try:
        import ray
    except ImportError:
        raise ThawError(INSTALL_RAY) from None
    return ray


def connect(ray, address: str | None) -> None:
    """Join the Ray at ``address`` (``auto``: the cluster this machine belongs to; ``None``: start one
    here); a Ray this process joined already is used as it is."""
    if address not in (None, "auto"):
        _reachable(address)
    if ray.is_initialized():
        return
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = "a running Ray on this machine" if address == "auto" else f"Ray at {address}"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ThawError(
            f"--address {address}: cannot connect to {where} ({first}); start it with `ray start --head`"
        ) from None


def _reachable(address: str, timeout: float = 3.0) -> None:
    """A HOST:PORT that answers, checked before Ray (which would wait long for a head that is not there)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdecimal():
        raise ThawError(f"--address {address}: give auto or HOST:PORT of a Ray head (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ThawError(
            f"--address {address}: no Ray head answers there ({err.strerror or err}); start one with "
            f"`ray start --head --port {port}` on {host}, or check the address"
        ) from None


# ------------------------------------------------------------------------------------------ the tables


class Metric(NamedTuple):
    """A column of a study's table: its label, its scale (100: shown in %, 1: a score, 0: a count) and
    how it is read from a run's summary (NaN where the run has no such number)."""

    label: str
    scale: float
    read: Callable[[RunSummary], float]


def _nan(x) -> float:
    return math.nan if x is None else x


def _on(split: str, name: str) -> Callable[[RunSummary], float]:
    return lambda s: getattr(s.final.on(split), name) if s.final.on(split) is not None else math.nan


def _drift(name: str) -> Callable[[RunSummary], float]:
    """A forgetting diagnostic of the saved model's plan (``weight_drift``: its largest value)."""

    def read(s: RunSummary) -> float:
        d = s.forgetting.get(s.final_phase)
        if d is None:
            return math.nan
        return max(d.weight_drift, default=math.nan) if name == "weight_drift" else _nan(getattr(d, name))

    return read


def _last(name: str) -> Callable[[RunSummary], float]:
    """A metric of the last plan trained (validation may have kept an earlier one's weights)."""

    def read(s: RunSummary) -> float:
        last = list(s.phases)[-1]
        if name == "cka":
            return s.forgetting[last].cka if last in s.forgetting else math.nan
        test = s.phases[last].test
        return getattr(test, name) if test is not None else math.nan

    return read


def _shift(s: RunSummary) -> float:
    return s.shift.corrupted_accuracy if s.shift and s.shift.corrupted_accuracy else math.nan


def _ood(s: RunSummary) -> float:
    return s.shift.ood.accuracy if s.shift and s.shift.ood else math.nan


def _seconds(s: RunSummary) -> float:
    return round(sum(p.seconds for p in s.phases.values()), 1)


METRICS: dict[str, Metric] = {
    "val_accuracy": Metric("val acc", 100, _on("val", "accuracy")),
    "test_accuracy": Metric("test acc", 100, _on("test", "accuracy")),
    "test_auc": Metric("test AUC", 1, _on("test", "auc")),
    "test_macro_f1": Metric("test macro-F1", 1, _on("test", "macro_f1")),
    "corrupted_accuracy": Metric("corrupted acc", 100, _shift),
    "ood_accuracy": Metric("OOD acc", 100, _ood),
    "cka": Metric("CKA", 1, _drift("cka")),
    "imagenet_agreement": Metric("ImageNet agr.", 1, _drift("imagenet_agreement")),
    "max_weight_drift": Metric("max weight drift", 1, _drift("weight_drift")),
    "seconds": Metric("seconds", 0, _seconds),
    "last_test_accuracy": Metric("last plan: test acc", 100, _last("accuracy")),
    "last_test_auc": Metric("last plan: test AUC", 1, _last("auc")),
    "last_cka": Metric("last plan: CKA", 1, _last("cka")),
}
"""Every metric column a study reads from a run, by the key its rows and tables use."""


def columns(keys) -> tuple[tuple[str, str, float], ...]:
    """``(key, label, scale)`` of the registry's ``keys``, in that order: what a table shows."""
    return tuple((k, METRICS[k].label, METRICS[k].scale) for k in keys)
