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
from dataclasses import dataclass

import torch

from thaw.errors import ThawError
from thaw.models import offline, torchvision_zoo

SORT_KEYS = ("family", "name", "params", "gflops", "top1", "top5", "input", "file")
DESCENDING = ("top1", "top5")

# timm keeps no accuracy in its pretrained configs: top-1 / top-5 from timm's results/results-imagenet.csv
# (ImageNet-1k validation at the test size listed there). DINOv2 has no ImageNet head.
TIMM_MODELS = {
    "tf_efficientnet_lite0": ("efficientnet_lite", 74.830, 92.172),
    "tf_efficientnet_lite1": ("efficientnet_lite", 76.644, 93.230),
    "tf_efficientnet_lite2": ("efficientnet_lite", 77.464, 93.750),
    "vit_small_patch14_dinov2": ("dinov2", None, None),
    "vit_tiny_patch16_224": ("vit", 75.454, 92.844),
    "deit_tiny_patch16_224": ("deit", 72.172, 91.112),
    "deit_small_patch16_224": ("deit", 79.844, 95.044),
    "resnet18": ("resnet", 73.158, 91.026),
    "resnet50": ("resnet", 81.214, 95.102),
    "convnext_tiny": ("convnext", 84.450, 97.340),
    "efficientnet_b0": ("efficientnet", 77.694, 93.532),
    "mobilenetv3_large_100": ("mobilenet_v3", 75.766, 92.538),
}


@dataclass(frozen=True)
class ZooEntry:
    name: str  # what --model takes
    family: str
    source: str  # torchvision | timm
    params: int
    gflops: float | None  # at 224x224, multiply-adds
    top1: float | None  # ImageNet-1k, of ``weights``
    top5: float | None
    input_size: int  # the weights' own input size
    weights: str  # the pretrained weights the row describes (the ones here offline, if any)
    file_mb: float | None  # size of the weights file
    offline: bool  # the weights load on this machine now, without a download

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def catalogue(
    family: str | None = None, offline_only: bool = False, max_params: int | None = None, sort: str = "family"
) -> list[ZooEntry]:
    """The rows of ``thaw models``, filtered and sorted. ``family`` matches the start of a family name
    (``efficientnet`` takes in ``efficientnet_v2`` and ``efficientnet_lite``) or a source (``timm``)."""
    if sort not in SORT_KEYS:
        raise ThawError(f"--sort {sort!r} is not one of {', '.join(SORT_KEYS)}")
    wanted = family.lower().removesuffix("/") if family else ""
    tv = {arch: _torchvision_family(arch) for arch in torchvision_zoo.supported_archs()}
    families = [("torchvision", f) for f in tv.values()] + [("timm", f) for f, _, _ in TIMM_MODELS.values()]
    if not any(_matches(wanted, source, f) for source, f in families):
        known = sorted({f for _, f in families} | {"torchvision", "timm"})
        raise ThawError(f"--family {family!r} matches no model; families: {', '.join(known)}")
    counts = _Counts()
    rows = [_torchvision_entry(arch) for arch, fam in tv.items() if _matches(wanted, "torchvision", fam)]
    rows += [_timm_entry(a, counts) for a, (fam, *_) in TIMM_MODELS.items() if _matches(wanted, "timm", fam)]
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
            return (row.family, row.source != "torchvision", _natural(row.name))
        if sort == "name":
            return (_natural(row.name),)
        return (missing, -value if sort in DESCENDING and not missing else value or 0, _natural(row.name))

    return key


def _natural(name: str) -> list:
    """resnet18 < resnet50 < resnet101."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _torchvision_entry(arch: str) -> ZooEntry:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    cached = offline.torchvision_cached(arch)
    weights = enum.DEFAULT if enum.DEFAULT in cached or not cached else cached[0]
    meta = weights.meta
    metrics = meta.get("_metrics", {}).get("ImageNet-1K", {})
    at_224 = [w.meta["_ops"] for w in enum if w.transforms().crop_size[0] == 224 and "_ops" in w.meta]
    return ZooEntry(
        name=arch,
        family=_torchvision_family(arch),
        source="torchvision",
        params=int(meta["num_params"]),
        gflops=at_224[0] if at_224 else None,
        top1=metrics.get("acc@1"),
        top5=metrics.get("acc@5"),
        input_size=int(weights.transforms().crop_size[0]),
        weights=weights.name,
        file_mb=meta.get("_file_size"),
        offline=bool(cached),
    )


def _torchvision_family(arch: str) -> str:
    family = torchvision_zoo.family_of(arch) or "other"
    if family == "resnet":  # resnet / resnext / wide_resnet share the contract, not the name
        return re.sub(r"\d.*$", "", arch)
    if family in ("efficientnet", "swin") and "_v2" in arch:
        return f"{family}_v2"
    return family


def _timm_entry(arch: str, counts: _Counts) -> ZooEntry:
    import timm

    family, top1, top5 = TIMM_MODELS[arch]
    cfg = timm.get_pretrained_cfg(arch)
    local = offline.timm_cached(arch)
    params, gflops = counts.get("timm", arch)
    return ZooEntry(
        name=f"timm/{arch}",
        family=family,
        source="timm",
        params=params,
        gflops=gflops,
        top1=top1,
        top5=top5,
        input_size=int(cfg.input_size[-1]),
        weights=cfg.tag or "default",
        file_mb=round(local.stat().st_size / 2**20, 3) if local else None,
        offline=local is not None,
    )


class _Counts:
    """Parameters and GFLOPs counted on the meta device, cached per torch/torchvision/timm version in
    ``$THAW_HOME/cache/zoo.json`` (a few seconds to count every row; a few milliseconds to read)."""

    def __init__(self) -> None:
        import timm
        import torchvision

        self.path = offline.weights_dir().parent / "cache" / "zoo.json"
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

    with torch.device("meta"):
        model = _meta_model(source, arch)
        params = sum(p.numel() for p in model.parameters())
        if _sized(source, arch):
            model = _meta_model(source, arch, size)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.eval()(torch.empty(1, 3, size, size))
    return params, round(counter.get_total_flops() / 2e9, 3)


def _sized(source: str, arch: str) -> bool:
    """Built for one input size (ViT-style position embeddings)."""
    from thaw.models.timm_zoo import takes_img_size

    return takes_img_size(arch) if source == "timm" else arch.startswith("vit_")


def _meta_model(source: str, arch: str, size: int | None = None) -> torch.nn.Module:
    if source == "timm":
        import timm

        return timm.create_model(arch, pretrained=False, **({"img_size": size} if size else {}))
    from torchvision.models import get_model

    return get_model(arch, weights=None, **({"image_size": size} if size else {}))
