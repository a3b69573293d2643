"""The catalogue behind ``thaw models``: every supported torchvision architecture and a curated set of timm
ones, with size, cost, ImageNet accuracy, input size and whether the weights are on this machine now.

torchvision's figures come from its weights metadata (``num_params``, ``_metrics``, ``_ops``,
``_file_size``). GFLOPs are at 224x224 for every row (multiply-adds, torchvision's convention): taken from
metadata measured at 224 where there is one, otherwise counted on the meta device (no memory, no weights)
and cached in ``$THAW_HOME/cache/zoo.json``.
"""

from __future__ import annotations

import dataclasses
import json
import re

import torch

from thaw.core.errors import ThawError
from thaw.models.adapters import ADAPTERS, ZooEntry, adapter_for
from thaw.models.paths import thaw_home

__all__ = ["SORT_KEYS", "ZooEntry", "catalogue", "count"]

SORT_KEYS = ("family", "name", "params", "gflops", "top1", "top5", "input", "file")
DESCENDING = ("top1", "top5")


def catalogue(
    family: str | None = None, offline_only: bool = False, max_params: int | None = None, sort: str = "family"
) -> list[ZooEntry]:
    """The rows of ``thaw models``, filtered and sorted. ``family`` matches the start of a family name
    (``efficientnet`` takes in ``efficientnet_v2`` and ``efficientnet_lite``) or a source (``timm``)."""
    if sort not in SORT_KEYS:
        raise ThawError(f"--sort {sort!r} is not one of {', '.join(SORT_KEYS)}")
    wanted = family.lower().removesuffix("/") if family else ""
    tables = {source: adapter.catalogue() for source, adapter in ADAPTERS.items()}
    families = [(source, f) for source, table in tables.items() for f in table.values()]
    if not any(_matches(wanted, source, f) for source, f in families):
        known = sorted({f for _, f in families} | set(ADAPTERS))
        raise ThawError(f"--family {family!r} matches no model; families: {', '.join(known)}")
    counts = _Counts()
    rows = [
        ADAPTERS[source].zoo_entry(arch, fam, counts)
        for source, table in tables.items()
        for arch, fam in table.items()
        if _matches(wanted, source, fam)
    ]
    if offline_only:
        rows = [r for r in rows if r.offline]
    if max_params is not None:
        rows = [r for r in rows if r.params <= max_params]
    rows = [
        r if r.gflops is not None else dataclasses.replace(r, gflops=counts.get(r.source, r.name)[1])
        for r in rows
    ]
    counts.save()
    return sorted(rows, key=_sort_key(sort))


def _matches(wanted: str, source: str, family: str) -> bool:
    return not wanted or family.startswith(wanted) or source == wanted


def _sort_key(sort: str):
    field = {"input": "input_size", "file": "file_mb"}.get(sort, sort)

    def key(row: ZooEntry):
        value = getattr(row, field)
        missing = value is None
        if sort == "family":
            return (row.family, list(ADAPTERS).index(row.source), _natural(row.name))
        if sort == "name":
            return (_natural(row.name),)
        return (missing, -value if sort in DESCENDING and not missing else value or 0, _natural(row.name))

    return key


def _natural(name: str) -> list:
    """resnet18 < resnet50 < resnet101."""
    return [int(p) if p.isdecimal() else p for p in re.split(r"(\d+)", name)]


class _Counts:
    """Parameters and GFLOPs counted on the meta device, cached per torch/torchvision/timm version in
    ``$THAW_HOME/cache/zoo.json`` (a few seconds to count every row; a few milliseconds to read)."""

    def __init__(self) -> None:
        import timm
        import torchvision

        self.path = thaw_home() / "cache" / "zoo.json"
        self.versions = f"{torch.__version__} {torchvision.__version__} {timm.__version__}"  # torch, tv, timm
        try:
            cache = json.loads(self.path.read_text())
        except (OSError, ValueError):
            cache = {}
        self.counts = cache.get("counts", {}) if cache.get("versions") == self.versions else {}
        self.changed = False

    def get(self, source: str, arch: str) -> tuple[int, float]:
        key = f"{source}/{arch}"
        if key not in self.counts:
            self.counts[key] = count(source, arch)
            self.changed = True
        params, gflops = self.counts[key]
        return int(params), float(gflops)

    def save(self) -> None:
        if not self.changed:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"versions": self.versions, "counts": self.counts}) + "\n")
        except OSError:  # a read-only home: count again next time
            pass


def count(source: str, arch: str, size: int = 224) -> tuple[int, float]:
    """(parameters, GFLOPs as multiply-adds at ``size`` px) of the full classifier, on the meta device.
    Parameters are the default configuration's (a ViT's position embeddings depend on its input size)."""
    from torch.utils.flop_counter import FlopCounterMode

    adapter = adapter_for(source)
    with torch.device("meta"):
        model = adapter.full_model(arch)
        params = sum(p.numel() for p in model.parameters())
        if adapter.takes_img_size(arch):
            model = adapter.full_model(arch, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(torch.empty(1, 3, size, size))
    return params, round(counter.get_total_flops() / 2e9, 3)


def parse_count(text: str) -> int:
    """``25M``, ``500k``, ``2.5e7`` or ``25`` (millions) -> a parameter count."""
    scale = {"k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}.get(text[-1:].lower())
    try:
        value = float(text[:-1] if scale else text)
    except ValueError:
        raise ThawError(f"--max-params {text!r} is not a count; give 25M, 500k or 25 (millions)") from None
    return int(value * scale if scale else value if value >= 1e4 else value * 1e6)
