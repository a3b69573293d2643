"""The run folder: written under ``<out>.incomplete`` and renamed to ``<out>`` only when the run is
complete, so a folder named like a run is always a whole run; an existing run is never overwritten."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from thaw.errors import ThawError


def default_out(dataset: str, model: str, root: str = "runs") -> Path:
    stem = f"{dataset}-{model.replace('/', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = Path(root) / stem, 2
    while out.exists() or staging_path(out).exists():
        out, n = Path(root) / f"{stem}-{n}", n + 1
    return out


def staging_path(out: Path) -> Path:
    return out.with_name(out.name + ".incomplete")


class RunFolder:
    def __init__(self, out: Path) -> None:
        self.final = Path(out)
        if self.final.exists():
            raise ThawError(
                f"run folder {self.final} already exists; choose another --out (thaw never overwrites a run)"
            )
        self.path = staging_path(self.final)
        if self.path.exists():  # a crashed earlier attempt at this same name; it never looked complete
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, data: dict) -> None:
        (self.path / name).write_text(json.dumps(data, indent=2) + "\n")

    def commit(self) -> Path:
        self.path.rename(self.final)
        return self.final
