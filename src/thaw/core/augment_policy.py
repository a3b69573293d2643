"""Training augmentation as data: a :class:`Policy` says which ops run (``thaw.data.augment.transform``
builds its torchvision v2 pipeline).

``--augment`` takes a preset or an explicit list of ops:

- ``auto`` (default): ``standard``, then checked on the user's data before fine-tuning
  (``thaw.train.augment_check``): an op that costs the solved head more than a measured share of its
  accuracy on the training images is destroying label information (a crop that cuts a small defect out
  of the picture), so the crop is weakened or the op dropped, and the run says so;
- ``none``: the deterministic eval view (center crop);
- ``light``: random resized crops of at least 80% of the area, horizontal flips;
- ``standard``: random resized crops of at least ``--crop-scale-min`` (0.5) of the area, horizontal flips
  (thaw's fixed default before ``auto``);
- ``strong``: ``standard`` plus TrivialAugment (Müller & Hutter 2021; torchvision's
  ``TrivialAugmentWide``);
- a list such as ``crop:0.6,hflip,rot90,color``: ``crop[:MIN_AREA]``, ``hflip``, ``vflip``, ``rot90``
  (0/90/180/270 degrees: orientation-free images such as textures, cells, satellite tiles), ``affine``
  (small rotations, shifts, scales), ``color`` (brightness, contrast and, for RGB, saturation jitter),
  ``trivial`` (TrivialAugment).

``--no-hflip`` takes flips out of the presets (digits, text). No torch here: a policy is plain data,
written to ``summary.json``; ``thaw.data.augment.transform`` builds its torchvision pipeline.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from thaw.core.errors import ThawError

PRESETS = ("auto", "none", "light", "standard", "strong")
OPS = ("crop", "hflip", "vflip", "rot90", "affine", "color", "trivial")
LIGHT_CROP = 0.8


@dataclass(frozen=True)
class Policy:
    """Which augmentations train phase 2. ``crop``: the smallest area share of a random resized crop
    (``None``: no random crop, the eval view's center crop)."""

    crop: float | None = None
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    affine: bool = False
    color: bool = False
    trivial: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        on = {op: getattr(self, op) for op in OPS}
        return tuple(op for op in OPS if (on[op] is not None if op == "crop" else on[op]))

    def without(self, op: str) -> Policy:
        return dataclasses.replace(self, **{op: None if op == "crop" else False})

    def describe(self) -> str:
        """``crop 0.5-1, hflip`` or ``none``: the form ``--augment`` takes back (``crop:0.5,hflip``)."""
        parts = [f"crop {self.crop:g}-1" if op == "crop" else op for op in self.ops]
        return ", ".join(parts) or "none"

    def spec(self) -> str:
        """The ``--augment`` value that gives exactly this policy."""
        return ",".join(f"crop:{self.crop:g}" if op == "crop" else op for op in self.ops) or "none"


def parse(text: str, crop_scale_min: float = 0.5, hflip: bool = True) -> Policy:
    """The policy an ``--augment`` value names (``auto`` names what the check starts from: ``standard``).
    ``crop_scale_min`` and ``hflip`` are the data settings that shape the presets."""
    value = str(text).strip().lower()
    if value in ("auto", "standard"):
        return Policy(crop=crop_scale_min, hflip=hflip)
    if value == "none":
        return Policy()
    if value == "light":
        return Policy(crop=max(crop_scale_min, LIGHT_CROP), hflip=hflip)
    if value == "strong":
        return Policy(crop=crop_scale_min, hflip=hflip, trivial=True)
    chosen: dict = {}
    for part in (p.strip() for p in value.split(",")):
        name, _, arg = part.partition(":")
        if name not in OPS or (arg and name != "crop"):
            raise ThawError(
                f"--augment {text!r}: {part!r} is not an augmentation; give one of {', '.join(PRESETS)} "
                f"or a comma-separated list of {', '.join(OPS)} (crop:MIN_AREA, e.g. crop:0.6,hflip)"
            )
        if name == "crop":
            try:
                area = float(arg) if arg else crop_scale_min
            except ValueError:
                area = -1.0
            if not 0.05 <= area <= 1.0:
                raise ThawError(
                    f"--augment {text!r}: crop:{arg} must be an area share in [0.05, 1], e.g. crop:0.6"
                )
            chosen["crop"] = area
        else:
            chosen[name] = True
    return Policy(**chosen)
