"""The run folder: written under ``<out>.incomplete`` and renamed to ``<out>`` only when the run is
complete, so a folder named like a run is always a whole run; an existing run is never overwritten, and
an interrupted one is never deleted: ``thaw resume`` continues it.

Every file is written atomically (a temporary file in the same folder, then a rename), so a run killed at
any moment leaves each file either as it was or complete, never truncated.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thaw.core.config import DataConfig, RunConfig, override
from thaw.core.errors import ThawError
from thaw.core.files import atomic_path, write_atomic
from thaw.core.resolved import Resolved
from thaw.core.results import PhaseResult, dumps

STAGING = ".incomplete"

active: Path | None = None
"""The staging folder of the run this process is writing, if any: what an interrupted command names."""


def default_out(dataset: str, model: str, root: str = "runs") -> Path:
    stem = f"{dataset}-{model.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = Path(root) / stem, 2
    while out.exists() or staging_path(out).exists():
        out, n = Path(root) / f"{stem}-{n}", n + 1
    return out


def study_folder(config, kind: str, stamped: bool = True) -> Path:
    """The folder of a study (``kind``: compare, curve, cv): ``config.out``, else
    ``runs/<data>-<model>-<kind>-<time>`` (``stamped``), or ``runs/<kind>-<data>-<model>`` (not stamped: a
    rerun of the same command finds the study and finishes it)."""
    if config.out:
        return Path(config.out)
    data = Path(config.data.path.removeprefix("builtin:")).stem
    if not stamped:
        return Path("runs") / f"{kind}-{data}-{config.model.name.replace('/', '-')}"
    return default_out(f"{data}-{kind}", config.model.name)


def check_outside_data(out: Path, data_path: str) -> None:
    """A run folder inside a data folder would be read as a class of images by the next run there."""
    data = Path(data_path)
    if not data_path or data_path.startswith("builtin:") or not data.is_dir():
        return
    if Path(out).resolve().is_relative_to(data.resolve()):
        raise ThawError(
            f"the run folder {out} would be inside the data folder {data} (its plots would become a class "
            f"of the next run); run thaw from outside {data} or give --out outside it"
        )


CONFIG, PLANS, SPLIT, LR_FIND = "config.yaml", "plans.yaml", "split.csv", "lr_find.json"
SUMMARY, MODEL, PREDICTIONS = "summary.json", "model.safetensors", "predictions.npz"
START_FILES = (CONFIG, PLANS, SPLIT)
"""What a run writes before it trains: without them there is nothing to resume."""


class RunFiles:
    """Reading a run folder, finished or staged: the one place its file names are spelled. ``config``,
    ``plans`` and ``lr_find`` are what the run was resolved to (:class:`Resolved`), ``split`` the images of
    each split, ``summary`` its record, ``model`` the kept model's file, ``predictions`` the kept model's
    validation and test probabilities (:class:`Stored`), computed once at the end of the run."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def split(self) -> Path:
        return self.path / SPLIT

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def config(self) -> RunConfig:
        return RunConfig.from_yaml(self.path / CONFIG)

    def resolved(self) -> Resolved:
        """The run's settings as ``thaw fit`` resolved and recorded them: what its resume hands the engine."""
        records = json.loads((self.path / LR_FIND).read_text()) if self.has(LR_FIND) else {}
        plans = Resolved.plans_from_yaml((self.path / PLANS).read_text())
        return Resolved(self.config().validate(), plans, records)

    def split_data(self, config: RunConfig | None = None) -> DataConfig:
        """``config``'s data settings (default the run's own) reading the run's split file: the same images
        in every split as the run had."""
        return override(config or self.config(), {"data.split_file": str(self.split)}).data

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text())

    def read_predictions(self) -> dict[str, Stored]:
        """The kept model's stored predictions by split (``val``, ``test``); empty for a run without them
        (one from before they were stored, or one that did not finish)."""
        if not self.predictions.is_file():
            return {}
        with np.load(self.predictions, allow_pickle=False) as npz:
            tta, classes = bool(npz["tta"]), [str(c) for c in npz["classes"]]
            splits = [str(s) for s in npz["splits"]]
            return {
                s: Stored(
                    s, [str(k) for k in npz[f"{s}_keys"]], npz[f"{s}_probs"], npz[f"{s}_labels"], classes, tta
                )
                for s in splits
            }


@dataclass(frozen=True)
class Stored:
    """The kept model's predictions on one split, as the run computed them once (``predictions.npz``):
    each image's key, its probabilities ``[N, C]`` (multi-label: per label), its label (``[N]``, or 0/1
    ``[N, K]``), the class names, and whether the probabilities are averaged over TTA views (``--tta``)."""

    split: str
    keys: list[str]
    probs: np.ndarray
    labels: np.ndarray
    classes: list[str]
    tta: bool


def resumable(path: Path | None) -> bool:
    """Whether ``thaw resume path`` can continue the run: its start files are there and its final name is
    free (a run whose ``--out`` appeared meanwhile cannot be renamed into place)."""
    if path is None or not Path(path).is_dir():
        return False
    if (Path(path) / "auto" / "auto.json").is_file():  # a --strategy auto search: it resumes from its record
        return not final_path(path).exists()
    return all((Path(path) / n).is_file() for n in START_FILES) and not final_path(path).exists()


def staging_path(out: Path) -> Path:
    return out.with_name(out.name + STAGING)


def final_path(path: Path) -> Path:
    """``runs/x.incomplete`` -> ``runs/x``; ``runs/x`` -> itself."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(STAGING)) if path.name.endswith(STAGING) else path


class RunFolder(RunFiles):
    """The run folder a run writes: ``RunFolder.create(out)`` for a new run, ``RunFolder.reopen(path)`` to
    resume an interrupted one; read as :class:`RunFiles`, under its staging name until :meth:`commit`."""

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.path = staging_path(self.final)

    @classmethod
    def create(cls, out: Path) -> RunFolder:
        run = cls(final_path(out))
        if run.final.exists():
            raise ThawError(
                f"run folder {run.final} already exists; choose another --out (thaw never overwrites a run)"
            )
        if run.path.exists():
            raise ThawError(
                f"{run.path} holds an interrupted run: continue it with `thaw resume {run.path}`, "
                f"or choose another --out, or delete that folder yourself"
            )
        try:
            run.path.mkdir(parents=True)
        except OSError as err:
            raise ThawError(
                f"cannot create the run folder {run.path} ({err.strerror}); choose a writable --out"
            ) from err
        run._activate()
        return run

    @classmethod
    def reopen(cls, path: Path) -> RunFolder:
        run = cls(final_path(path))
        if not run.path.is_dir():
            if (run.final / SUMMARY).is_file():
                raise ThawError(f"{run.final} is a finished run: there is nothing to resume")
            raise ThawError(f"no interrupted run at {run.path}; give the folder `thaw fit` was writing")
        missing = [n for n in START_FILES if not (run.path / n).is_file()]
        if missing:
            raise ThawError(
                f"{run.path} has no {missing[0]}: it was interrupted before it started; delete it and "
                f"run `thaw fit` again"
            )
        if run.final.exists():
            raise ThawError(
                f"{run.final} exists beside the interrupted {run.path}, so the run cannot be finished "
                f"under its name; move {run.final} away first, then resume"
            )
        for stale in run.path.rglob(".*.tmp"):  # the temporary file of a write the kill interrupted
            stale.unlink()
        run._activate()
        return run

    def _activate(self) -> None:
        global active
        active = self.path

    def write_resolved(self, resolved: Resolved) -> None:
        """``config.yaml``, ``plans.yaml`` and (where an LR was found) ``lr_find.json``: what
        :meth:`RunFiles.resolved` reads back."""
        if resolved.lr_find:
            self.write_json(LR_FIND, resolved.lr_find)
        self.write_text(CONFIG, resolved.config.to_yaml())
        self.write_text(PLANS, resolved.plans_yaml())

    def write_predictions(self, stored: dict[str, Stored]) -> None:
        """``predictions.npz``: :class:`Stored` by split, readable with numpy alone
        (:meth:`RunFiles.read_predictions`)."""
        first = next(iter(stored.values()))
        arrays = {"splits": np.array(list(stored)), "classes": np.array(first.classes), "tta": first.tta}
        for s, p in stored.items():
            arrays |= {f"{s}_keys": np.array(p.keys), f"{s}_probs": p.probs, f"{s}_labels": p.labels}
        with atomic_path(self.predictions) as tmp, tmp.open("wb") as fh:
            np.savez(fh, **arrays)

    def write_text(self, name: str, text: str) -> None:
        write_atomic(self.path / name, text)

    def write_json(self, name: str, data: dict) -> None:
        write_atomic(self.path / name, dumps(data))

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def phase_file(self, name: str) -> Path:
        return self.path / "phases" / f"{name}.json"

    def finished_phase(self, name: str) -> PhaseResult | None:
        """The result of a plan that finished in an earlier attempt of this run, if any."""
        path = self.phase_file(name)
        if not path.is_file():
            return None
        return PhaseResult.from_dict(json.loads(path.read_text()))

    def save_phase(self, result: PhaseResult) -> None:
        self.phase_file(result.name).parent.mkdir(exist_ok=True)
        write_atomic(self.phase_file(result.name), dumps(result.to_dict()))

    def save_weights(self, name: str, model) -> None:
        """A plan's best weights: ``checkpoints/<plan>.safetensors``."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        self.checkpoints.mkdir(exist_ok=True)
        with atomic_path(self.checkpoints / f"{name}.safetensors") as tmp:
            save_file(state, str(tmp))

    def load_weights(self, name: str) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.checkpoints / f"{name}.safetensors"))

    def commit(self) -> Path:
        global active
        if self.final.exists():  # --out appeared while the run trained: never overwrite or merge
            raise ThawError(
                f"{self.final} appeared while this run trained (thaw never overwrites a run); the finished "
                f"run is in {self.path}: move it to a free name, e.g. mv {self.path} {self.final}-2"
            )
        self.path.rename(self.final)
        active = None
        return self.final


class FollowerRun(RunFolder):
    """Another rank's view of rank 0's run folder under DDP: it reads what rank 0 wrote, never writes."""

    def write_text(self, name: str, text: str) -> None:
        pass

    def write_json(self, name: str, data: dict) -> None:
        pass

    def save_phase(self, result: PhaseResult) -> None:
        pass

    def write_predictions(self, stored: dict[str, Stored]) -> None:
        pass

    def save_weights(self, name: str, model) -> None:
        pass

    def commit(self) -> Path:
        return self.final
