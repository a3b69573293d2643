"""A local weights file, imported once: loaded strictly into its architecture and kept in thaw's folder."""

from __future__ import annotations

from pathlib import Path

from thaw.core.errors import ThawError
from thaw.models.adapters import adapter_for
from thaw.models.build import parse_model_name
from thaw.models.paths import installed_path
from thaw.models.state_dict import load_into, read_state_dict, save_state, sha256


def import_weights(name: str, file: str | Path, log=print) -> Path:
    """Load a local weights file strictly into ``name``'s architecture (prefixes stripped, ViT position
    embeddings resampled) and save it in thaw's weights folder. A timm model then uses it for
    ``--weights DEFAULT``; a torchvision model takes it as ``--weights PATH``. The classifier's tensors,
    if the file has them, are kept (``thaw weights verify`` uses an ImageNet head)."""
    path = Path(file)
    if not path.is_file():
        raise ThawError(f"no weights file at {file}; give a .pth/.pt/.bin/.ckpt or .safetensors file")
    source, arch, _ = parse_model_name(name)
    adapter = adapter_for(source)
    state = read_state_dict(path)
    model, heads = adapter.headless(arch)
    head_state = {k: v for k, v in state.items() if k.startswith(heads)}
    body = {k: v for k, v in state.items() if not k.startswith(heads)}
    load_into(model, body, source=str(file))
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    target = installed_path(source, arch)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_state(
        {**own, **head_state},
        partial,
        {"thaw_arch": arch, "thaw_source": str(path.resolve()), "thaw_sha256": sha256(path)},
    )
    partial.replace(target)
    resampled = [k for k in own if k in body and body[k].shape != own[k].shape]
    notes = (
        f"{len(own)} tensors"
        + (f", {', '.join(resampled)} resampled" if resampled else "")
        + (f", classifier kept ({len(head_state)} tensors)" if head_state else ", no classifier")
    )
    model_name = adapter.model_name(arch)
    use = "--weights DEFAULT" if adapter.installed_is_default else f"--weights {target}"
    log(f"{model_name}: imported {file} ({notes}) into {target}; use --model {model_name} {use}")
    return target
