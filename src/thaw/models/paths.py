"""Where weight files are: thaw's own folder, torch's hub cache, the Hugging Face hub cache.

A leaf: it knows file locations only, never how a source builds a model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def thaw_home() -> Path:
    """``$THAW_HOME``, by default ``~/.cache/thaw``."""
    return Path(os.environ.get("THAW_HOME") or "~/.cache/thaw").expanduser()


def weights_dir() -> Path:
    """Where thaw keeps installed and imported weights: ``$THAW_HOME/weights``."""
    return thaw_home() / "weights"


def installed_path(source: str, arch: str) -> Path:
    return weights_dir() / source / f"{arch}.safetensors"


def installed_file(source: str, arch: str) -> Path | None:
    """The weights file thaw installed or imported for ``arch``, if there is one."""
    path = installed_path(source, arch)
    return path if path.is_file() else None


def hub_checkpoint(url: str) -> Path:
    """Where torch's hub loader (and so torchvision's weights API) keeps the file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def torchvision_cached(arch: str) -> list:
    """The torchvision weights of ``arch`` whose files are already in torch's hub cache (no download)."""
    from torchvision.models import get_model_weights

    return [w for w in get_model_weights(arch) if hub_checkpoint(w.url).is_file()]


def timm_cached(arch: str, tag: str | None = None) -> Path | None:
    """A local file timm's ``pretrained=True`` (or thaw, for a thaw-installed file) loads without a
    download: thaw's own file, the Hugging Face hub cache, or torch's hub cache."""
    import timm

    if tag is None and (path := installed_file("timm", arch)):
        return path
    cfg = timm.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in ("model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    if cfg.url and (path := hub_checkpoint(cfg.url)).is_file():
        return path
    return None
