"""Weight files: reading them safely (never executing pickled code), loading them strictly, writing them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from thaw.core.errors import ThawError

STRIP_PREFIXES = ("module.", "model.", "backbone.", "encoder.")
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def is_weights_path(weights: str) -> bool:
    """``--weights`` names a file rather than a weights name (``DEFAULT``, ``IMAGENET1K_V1``, a timm tag)."""
    return weights.lower().endswith(WEIGHT_SUFFIXES) or "/" in weights or Path(weights).exists()


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file loaded with ``weights_only=True``; a full
    checkpoint's ``state_dict`` / ``model`` entry is unwrapped and common prefixes are stripped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors' own error types: truncated, not safetensors at all
            why = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ThawError(
                f"cannot read {path} as safetensors ({why}); "
                f"is it truncated or another format? Re-download or re-export it"
            ) from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle errors come in many types
            raise ThawError(
                f"cannot read {path} as a weights file without running code in it ({err}".splitlines()[0]
                + "); save it as a plain state dict or .safetensors"
            ) from err
    for key in ("state_dict", "model", "model_state_dict", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ThawError(
            f"{path} holds no state dict of tensors; save one with torch.save(model.state_dict())"
        )
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ThawError(
            f"{path} holds NaN or infinite values (in {', '.join(bad[:3])}); these weights are broken"
        )
    return strip_prefixes(state)


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.`` / ``model.`` / ``backbone.`` when every key carries it (DDP, Lightning, ...)."""
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str, skip_prefix: str = "") -> None:
    """Strict load, except keys under ``skip_prefix`` (the classifier being replaced). Any missing,
    unexpected or mis-shaped key is an error that lists them."""
    if skip_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(skip_prefix)}
    own = {k: v for k, v in model.state_dict().items() if not (skip_prefix and k.startswith(skip_prefix))}
    state = _resample_pos_embed(model, state)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise ThawError(
            f"weights file {source} does not fit {type(model).__name__}: {'; '.join(parts)}. "
            f"Check --model matches the architecture the file was saved from"
        )
    model.load_state_dict(state, strict=False)


def _resample_pos_embed(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm ViTs: resample absolute position embeddings saved for another image size."""
    own = model.state_dict().get("pos_embed")
    theirs = state.get("pos_embed")
    if own is None or theirs is None or own.shape == theirs.shape or not hasattr(model, "patch_embed"):
        return state
    from timm.layers import resample_abs_pos_embed

    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    resampled = resample_abs_pos_embed(
        theirs, new_size=list(model.patch_embed.grid_size), num_prefix_tokens=prefix
    )
    return {**state, "pos_embed": resampled}


def save_state(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    """A ``.safetensors`` file of ``state`` with string metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(path), metadata={**meta, "format": "pt"})


def file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
