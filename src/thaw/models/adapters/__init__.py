"""One adapter per model source, looked up by ``ModelSpec.source``; the rest of thaw never asks which."""

from __future__ import annotations

from thaw.core.errors import ThawError
from thaw.models.adapters.base import Adapter, Backbone, ImageNetModel, ZooEntry
from thaw.models.adapters.timm import TimmAdapter
from thaw.models.adapters.torchvision import TorchvisionAdapter

__all__ = ["ADAPTERS", "Adapter", "Backbone", "ImageNetModel", "ZooEntry", "adapter_for", "strip_prefix"]

# In lookup order: an unprefixed name that both sources know (``resnet18``) is torchvision's.
ADAPTERS: dict[str, Adapter] = {a.source: a for a in (TorchvisionAdapter(), TimmAdapter())}


def adapter_for(source: str) -> Adapter:
    try:
        return ADAPTERS[source]
    except KeyError:
        raise ThawError(f"unknown model source {source!r}; known: {', '.join(ADAPTERS)}") from None


def strip_prefix(name: str) -> tuple[Adapter | None, str]:
    """``timm/convnext_tiny`` -> (the timm adapter, ``convnext_tiny``); no source prefix -> (None, name)."""
    for adapter in ADAPTERS.values():
        for prefix in adapter.prefixes:
            if name.startswith(prefix):
                return adapter, name[len(prefix) :]
    return None, name
