"""Datasets as shards: WebDataset tar files (local, ``http(s)://``, or any URL fsspec reads, e.g.
``s3://``) and LitData's optimized format, read image by image, never collected.

A WebDataset shard is a tar file whose members are grouped by key: ``<key>.png`` (or ``.jpg``, ``.npy``,
...) holds the image's bytes, ``<key>.cls`` its class index, ``<key>.json`` optional metadata (thaw writes
the image's original ``key``, ``split`` and ``label``). The split comes from the shard's name
(``train-000000.tar``, ``val-000000.tar``, ``test-*.tar``, or a ``train/`` folder) or a ``--split-file``;
the class names from ``classes.json`` next to the shards (a list of names). ``thaw shards`` also writes
``manifest.json``: every sample's key, label, and the byte range of its image in its shard, so reading a
dataset needs that one small file and no pass over the shards; shards without it are read once, from
end to end, to find the same.

Each image is then one ranged read (``os.pread`` of a local shard, an HTTP ``Range`` request, fsspec's
``cat_file``) and decoded exactly as the file it came from (``images.load_image``): a folder and its
shards give the same tensors. Hand-written tar reading rather than ``webdataset.WebDataset``: that one
streams samples in shard order (with a shuffle buffer), while thaw's training order is a function of
(seed, epoch) over item indices (``images.EpochSampler``: the same batches after a resume, and on every
DDP rank), which needs each image by index; the byte range of a tar member is exact and cheap to keep.
Writing goes through ``webdataset.ShardWriter``, so any WebDataset reader reads thaw's shards.
"""

from __future__ import annotations

import glob
import io
import json
import os
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from thaw.core.config import DataConfig
from thaw.core.errors import ThawError
from thaw.data import sources as found
from thaw.data.sources import SPLIT_ALIASES, SPLITS, Item, Sources

MANIFEST, CLASSES = "manifest.json", "classes.json"
IMAGE_MEMBERS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "gif", "npy")
TIMEOUT = 60  # seconds for one HTTP request
MEMBER_NAME = re.compile(r"(?:[^/]+/)*[^./]+\.[A-Za-z0-9]+")  # <key>.<ext>, as scan finds them


@dataclass(frozen=True)
class Member:
    """One image inside a shard: bytes ``offset`` to ``offset + size`` of ``url``, named ``name``
    (``<key>.<ext>``: the extension says how to decode it)."""

    url: str
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        data = read_range(self.url, self.offset, self.size)
        if len(data) != self.size:
            raise ThawError(
                f"shard {self.url} is truncated: member {self.name} ends at byte {self.offset + self.size}, "
                f"past its end; write the shard again (thaw shards)"
            )
        return data

    def open(self) -> np.ndarray | Blob:
        """The image: an array (a ``.npy`` member), else its encoded bytes as a file Pillow opens."""
        data = self.read()
        if self.name.lower().endswith(".npy"):
            try:
                return np.load(io.BytesIO(data), allow_pickle=False)  # never unpickle
            except ValueError as err:
                raise ValueError(f"{self.name} in {self.url} is not a readable .npy array ({err})") from err
        return Blob(data, f"{self.url}#{self.name}")

    def fingerprint(self) -> str:
        """What the caches key on: the range, and a local shard's size and modification time."""
        stamp = ""
        if not is_remote(self.url):
            stat = os.stat(self.url)
            stamp = f":{stat.st_size}:{stat.st_mtime_ns}"
        return f"{self.url}:{self.offset}:{self.size}{stamp}"


class Blob(io.BytesIO):
    """A member's bytes, read like a file; ``str()`` names it in error messages."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name


def is_remote(url: str) -> bool:
    return "://" in url


_FDS: dict[str, tuple[int, int]] = {}  # path -> (pid, descriptor): a DataLoader worker opens its own


def read_range(url: str, offset: int, size: int) -> bytes:
    """``size`` bytes of ``url`` from ``offset``: a local file, an HTTP(S) range request, or fsspec."""
    if url.startswith(("http://", "https://")):
        headers = {"Range": f"bytes={offset}-{offset + size - 1}"}
        with _http(url, headers) as response:
            if response.status != 206:
                raise ThawError(
                    f"{url}: the server ignores HTTP Range requests (status {response.status}); serve the "
                    f"shards from object storage or a server that supports them (nginx, caddy, S3, GCS)"
                )
            return response.read()
    if is_remote(url):
        return _fsspec(url).cat_file(url, start=offset, end=offset + size)
    pid, fd = _FDS.get(url, (-1, -1))
    if pid != os.getpid():
        try:
            fd = os.open(url, os.O_RDONLY)
        except FileNotFoundError:
            raise ThawError(f"shard {url} does not exist (moved or deleted since it was listed)") from None
        _FDS[url] = (os.getpid(), fd)
    return os.pread(fd, size, offset)


def _http(url: str, headers: dict | None = None):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        raise ThawError(f"{url}: HTTP {err.code} {err.reason}; check the URL and the server") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ThawError(f"cannot reach {url} ({reason}); check the address and the network") from None


def _fsspec(url: str):
    try:  # fsspec comes with Lightning; a protocol's own package (s3fs, gcsfs) is the user's to install
        import fsspec

        return fsspec.filesystem(url.split("://", 1)[0])
    except (ImportError, ValueError) as err:
        raise ThawError(
            f"cannot read {url}: {err}; install fsspec's package for that protocol (s3fs for s3://, "
            f"gcsfs for gs://), or serve the shards over https"
        ) from None


def open_whole(url: str):
    """A binary file object over all of ``url`` (read from start to end)."""
    if url.startswith(("http://", "https://")):
        return _http(url)
    if is_remote(url):
        try:
            return _fsspec(url).open(url, "rb")
        except FileNotFoundError:
            raise ThawError(f"shard {url} does not exist") from None
    if not Path(url).is_file():
        raise ThawError(f"shard {url} does not exist; check the path (or the pattern's range)")
    return open(url, "rb")


def read_small(url: str) -> bytes | None:
    """All of a small file (a manifest, a class list), or None where there is none."""
    if is_remote(url):
        try:
            with open_whole(url) as fh:
                return fh.read()
        except ThawError as err:
            if "HTTP 404" in str(err) or "does not exist" in str(err):
                return None
            raise
    return Path(url).read_bytes() if Path(url).is_file() else None


def _extra(name: str):
    """A module of the ``shards`` extra (webdataset, braceexpand, litdata), imported when used."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        raise ThawError(f"shards need {name}: pip install 'thaw-transfer[shards]'") from None


# ---- where the shards are


def claims(path: str) -> bool:
    """Whether ``path`` names WebDataset shards: a URL, a pattern (``{000..009}``, ``*``, ``a::b``), a
    ``.tar`` file, or a folder holding ``manifest.json`` or ``.tar`` files (itself or in split folders)."""
    p = Path(path)
    if p.exists():
        if p.is_file():
            return p.suffix.lower() == ".tar"
        if claims_litdata(path):
            return False
        return (
            (p / MANIFEST).is_file()
            or any(p.glob("*.tar"))
            or any(any(d.glob("*.tar")) for d in _split_dirs(p))
        )
    return is_remote(path) or "::" in path or any(c in path for c in "{*?[")


def _split_dirs(root: Path) -> list[Path]:
    return [root / a for aliases in SPLIT_ALIASES.values() for a in aliases if (root / a).is_dir()]


def shard_split(url: str) -> str | None:
    """The split a shard's name gives (``train-000000.tar``, ``val_3.tar``, ``test/000.tar``), or None."""
    parts = url.rstrip("/").split("/")
    for part in (parts[-1], parts[-2] if len(parts) > 1 else ""):
        for token in re.split(r"[-_.]", part.lower()):
            for split, aliases in SPLIT_ALIASES.items():
                if token in aliases:
                    return split
    return None


def shard_list(spec: str) -> list[str]:
    """The shards ``spec`` names: ``::``-separated parts, each a brace pattern (``{000000..000009}``), a
    glob, a folder (its ``.tar`` files, recursively), a file or a URL."""
    braceexpand = _extra("braceexpand").braceexpand
    urls: list[str] = []
    for part in spec.split("::"):
        for one in braceexpand(part):
            if is_remote(one) or not any(c in one for c in "*?[") and not Path(one).is_dir():
                urls.append(one)
            elif Path(one).is_dir():
                urls += sorted(str(f) for f in Path(one).rglob("*.tar"))
            else:
                hits = sorted(glob.glob(one))
                if not hits:
                    raise ThawError(f"no shard matches {one}; check the pattern")
                urls += hits
    if not urls:
        raise ThawError(f"{spec}: no shards found (expected .tar files, e.g. train-000000.tar)")
    return urls


def _base(spec: str) -> str:
    """Where ``manifest.json`` and ``classes.json`` would be: the folder, or the first shard's."""
    first = spec.split("::")[0]
    if first.endswith("/") or not is_remote(first) and Path(first).is_dir():
        return first.rstrip("/")
    return first.rsplit("/", 1)[0] if "/" in first else "."


def locate(spec: str) -> tuple[list[tuple[str, str | None, list]], dict]:
    """Every shard of ``spec`` with its split and samples (key, member, offset, size, label), and the
    manifest (empty where there is none): a folder's shards are the manifest's when it has one."""
    base = _base(spec)
    manifest = read_manifest(base)
    listed = {f"{base}/{e['file']}": e for e in manifest.get("shards", [])}
    folder = spec.endswith("/") or not is_remote(spec) and Path(spec).is_dir()
    if folder and not listed:
        if is_remote(spec):
            raise ThawError(
                f"{spec}: no {MANIFEST} there; name the shards (e.g. {spec}train-{{000..009}}.tar)"
            )
    urls = list(listed) if folder and listed else shard_list(spec)
    shards = []
    for url in urls:
        entry = listed.get(url)
        if entry is not None:
            samples = _within(url, entry["samples"], byte_size(url))
            shards.append((url, entry.get("split") or shard_split(url), samples))
        else:
            shards.append((url, shard_split(url), scan(url)))
    return shards, manifest


def read_manifest(base: str) -> dict:
    """``manifest.json`` of the shards in ``base`` ({} where there is none), its shape checked: every entry
    names a shard inside ``base`` (a relative path, no ``..``), with samples of five fields."""
    raw = read_small(f"{base}/{MANIFEST}")
    if not raw:
        return {}
    where = f"{base}/{MANIFEST}"
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ThawError(f"{where} is not JSON ({err}); write the shards again (thaw shards)") from None
    entries = manifest.get("shards", []) if isinstance(manifest, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ThawError(f"{where}: expected a mapping with a list of shards; write the shards again")
    for e in entries:
        file = e.get("file")
        parts = PurePosixPath(file).parts if isinstance(file, str) else ()
        if not parts or PurePosixPath(file).is_absolute() or ".." in parts or "\\" in file or ":" in file:
            raise ThawError(
                f"{where}: shard {str(file)[:80]!r} is not a file inside {base} (a relative name such as "
                f"train-000000.tar); a manifest names only its own shards"
            )
        if e.get("split") not in (None, "", *SPLITS):
            split = str(e.get("split"))[:40]
            raise ThawError(f"{where}: shard {file}: split {split!r} is not one of {', '.join(SPLITS)}")
        samples = e.get("samples")
        litdata = manifest.get("format") == "thaw-litdata" and isinstance(samples, int)
        if not litdata and not (
            isinstance(samples, list) and all(isinstance(x, list) and len(x) == 5 for x in samples)
        ):
            raise ThawError(f"{where}: shard {file}: samples are not [key, member, offset, size, label] rows")
    return manifest


def byte_size(url: str) -> int | None:
    """The byte size of a shard (None where the server does not say); a missing shard is refused."""
    if not is_remote(url):
        if not Path(url).is_file():
            raise ThawError(f"shard {url} does not exist; the manifest lists it (copy it back, or rewrite)")
        return Path(url).stat().st_size
    if url.startswith(("http://", "https://")):
        with _http(url, {"Range": "bytes=0-0"}) as response:
            total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
            return int(total) if total.isdecimal() else None
    fs = _fsspec(url)
    if not fs.exists(url):
        raise ThawError(f"shard {url} does not exist")
    return fs.size(url)


def _within(url: str, samples: list, size: int | None) -> list:
    """The manifest's samples of shard ``url``, each a member of that shard: a plain ``<key>.<ext>`` name
    and a byte range (whole numbers) inside the shard's ``size`` bytes; else one line naming the sample."""
    for key, name, offset, length, _ in samples:
        if not isinstance(key, str) or not key:
            raise ThawError(f"shard {url}: sample key {str(key)[:80]!r} is not text; write the shards again")
        whole = all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (offset, length))
        if not isinstance(name, str) or not MEMBER_NAME.fullmatch(name) or ".." in name:
            raise ThawError(f"shard {url}, sample {str(key)[:80]}: member {str(name)[:80]!r} is not a name")
        if not whole or size is not None and offset + length > size:
            raise ThawError(
                f"shard {url}, sample {str(key)[:80]}: bytes {offset}+{length} lie outside the shard "
                f"({size} bytes); the manifest does not describe this shard: write the shards again"
            )
    return samples


# ---- reading a shard once, from start to end


def scan(url: str) -> list[list]:
    """The samples of one shard, in order: ``[key, member, offset, size, label]``; the key is the
    original image's (its ``.json``), else ``<shard>#<sample key>``."""
    groups: dict[str, dict] = {}
    try:
        with open_whole(url) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
            total = _open_size(fh)
            for info in tar:
                # before tarfile skips to the next header: a header claiming 1 TiB would be read to its end
                if total is not None and info.offset_data + info.size > total:
                    raise ThawError(
                        f"shard {url} is not a readable tar file: member {info.name[:80]} claims {info.size} "
                        f"bytes from byte {info.offset_data}, past the end of the file ({total} bytes; "
                        f"truncated or damaged); write it again"
                    )
                match = re.match(r"^((?:.*/)?[^./]+)\.([^/]+)$", info.name)
                if not info.isfile() or not match:
                    continue
                group, ext = groups.setdefault(match.group(1), {}), match.group(2).lower()
                slot = "member" if ext in IMAGE_MEMBERS else ext if ext in ("cls", "json") else None
                if slot in group:
                    first = group["names"][slot]
                    raise ThawError(
                        f"shard {url}: members {first[:80]} and {info.name[:80]} give sample "
                        f"{match.group(1)[:80]} two {'images' if slot == 'member' else '.' + slot}; keep one"
                    )
                if slot is not None:
                    group.setdefault("names", {})[slot] = info.name
                if slot == "member":
                    group["member"] = (info.name, info.offset_data, info.size)
                elif slot is not None:
                    group[ext] = tar.extractfile(info).read()
    except (tarfile.TarError, EOFError) as err:
        raise ThawError(f"shard {url} is not a readable tar file ({err}); write it again") from None
    except OSError as err:
        raise ThawError(f"cannot read shard {url} ({err}); check the path or the network") from None
    return [_sample(url, key, group) for key, group in groups.items()]


def _open_size(fh) -> int | None:
    """The byte size of an open shard: a local file's, an HTTP response's ``Content-Length``, fsspec's."""
    try:
        status = os.fstat(fh.fileno())
        if stat.S_ISREG(status.st_mode):  # not an HTTP response's socket (whose st_size is 0)
            return status.st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        pass
    length = getattr(fh, "headers", {}).get("Content-Length") if hasattr(fh, "headers") else None
    if length is not None:
        return int(length) if str(length).isdecimal() else None
    size = getattr(fh, "size", None)
    return size if isinstance(size, int) else None


def _sample(url: str, key: str, group: dict) -> list:
    where = f"shard {url}, sample {key}"
    if "member" not in group:
        raise ThawError(f"{where}: no image member (one of .{', .'.join(IMAGE_MEMBERS)})")
    try:
        meta = json.loads(group["json"]) if "json" in group else {}
        label = meta["label"] if "label" in meta else int(group["cls"].decode().strip())
    except KeyError:
        raise ThawError(f"{where}: no label (a .cls member with the class index)") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ThawError(f"{where}: unreadable label or metadata ({err})") from None
    name, offset, size = group["member"]
    return [meta.get("key") or f"{url}#{key}", name, offset, size, label]


# ---- the data source


def find(path: str | Path) -> Sources:
    """The items of WebDataset shards (``thaw fit SPEC``): split from the shards' names, class names from
    ``classes.json``; each item reads its image from its shard when it is decoded."""
    spec = str(path)
    shards, manifest = locate(spec)
    class_names = _class_names(spec, manifest, shards)
    multilabel = bool(manifest.get("multilabel"))
    items = []
    for url, split, samples in shards:
        for key, name, offset, size, label in samples:
            label = _check_label(url, key, label, class_names, multilabel)
            items.append(Item(key, label, split, source=Member(url, int(offset), int(size), name)))
    if not items:
        raise ThawError(f"{spec}: the shards hold no samples")
    _check_unique(items)
    unsplit = [url for url, split, _ in shards if split is None]
    name = manifest.get("name") or Path(_base(spec).rstrip("/")).name or "shards"
    sources = Sources(name, class_names, items, split_origin="shards", multilabel=multilabel)
    if len(unsplit) == len(shards):
        sources.needs_split = (
            f"{spec}: the shards' names carry no split (train-000000.tar, val-*.tar, test-*.tar, or train/ "
            f"folders) and no --split-file was given; rename the shards or give a split file"
        )
    elif unsplit:
        raise ThawError(f"shard {unsplit[0]} has no split in its name while others do; rename it (train-...)")
    return sources


def _check_unique(items: list[Item]) -> None:
    """Each sample key once in the whole dataset; a repeat names both members that carry it."""
    seen: dict[str, Item] = {}
    for it in items:
        first = seen.setdefault(it.key, it)
        if first is not it:
            raise ThawError(
                f"sample key {it.key[:80]} appears twice: {_where(first)} and {_where(it)}; give each image "
                f"one key (write the shards again)"
            )


def _where(it: Item) -> str:
    source = it.source
    if isinstance(source, Member):
        return f"{source.url}#{source.name}"
    return f"{source.folder}#{source.index}" if isinstance(source, LitSample) else it.key


def _class_names(spec: str, manifest: dict, shards: list) -> list[str]:
    names = _listed_names(spec, manifest, shards)
    where = f"{_base(spec)}/{CLASSES}"
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ThawError(f"{where}: class name {str(name)[:80]!r} is empty or not text; name every class")
        if name in seen:
            raise ThawError(f"{where}: class {name[:80]!r} is listed twice; each class once, in label order")
        seen.add(name)
    return names


def _listed_names(spec: str, manifest: dict, shards: list) -> list[str]:
    raw = read_small(f"{_base(spec)}/{CLASSES}")
    if raw is not None:
        try:
            names = json.loads(raw)
            names = names["classes"] if isinstance(names, dict) else names
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError("expected a list of class names")
        except (ValueError, KeyError, TypeError) as err:
            raise ThawError(f"{_base(spec)}/{CLASSES}: not a JSON list of class names ({err})") from None
        return names
    if manifest.get("classes"):
        return list(manifest["classes"])
    top = max((s[4] for _, _, samples in shards for s in samples if isinstance(s[4], int)), default=0)
    return [str(c) for c in range(top + 1)]


def _check_label(url: str, key: str, label, class_names: list[str], multilabel: bool):
    n = len(class_names)
    if multilabel:
        if not isinstance(label, list) or len(label) != n or any(v not in (0, 1) for v in label):
            raise ThawError(f"shard {url}, sample {key}: label {label} is not {n} values of 0/1")
        return tuple(label)
    if not isinstance(label, int) or not 0 <= label < n:
        raise ThawError(
            f"shard {url}, sample {key}: label {label} is outside the {n} classes of {CLASSES} "
            f"(0 to {n - 1}); fix the label or the class list"
        )
    return label


# ---- writing shards (thaw shards)


def parse_shard_size(text: str) -> tuple[int, float]:
    """``--shard-size``: images per shard (``1000``) or size per shard (``64MB``, ``1.5GB``, ``500KB``):
    ``(max images, max bytes)``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(kb|mb|gb|k|m|g)?\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0 or not match.group(2) and "." in match.group(1):
        raise ThawError(
            f"--shard-size {text!r}: give images per shard (e.g. 1000) or a size (e.g. 64MB, 1GB)"
        )
    value, unit = float(match.group(1)), match.group(2)
    if unit is None:
        return int(value), 3e12
    return 10**12, value * 1024 ** (" kmg".index(unit[0]))


def check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ThawError(
            f"{out} is not an empty folder; thaw shards never overwrites: give a new or empty one"
        )


def write(config: DataConfig, out: Path, shard_size: str = "1000", kind: str = "webdataset") -> dict:
    """Shards of the data ``config`` names, with the split thaw would make (or the data's own) in ``out``:
    ``<split>-000000.tar`` ... (``kind`` ``litdata``: a LitData dataset per split, ``<split>/``),
    ``classes.json`` and ``manifest.json``. Written beside ``out`` and
    renamed into place: an interrupted run leaves nothing behind. Returns what was written."""
    count, size = parse_shard_size(shard_size)
    out = Path(out)
    check_out(out)
    data = Path(config.path)
    if config.path and not is_remote(config.path) and data.is_dir():
        if out.resolve().is_relative_to(data.resolve()):
            raise ThawError(
                f"--out {out} is inside the data it reads ({data}): the next thaw fit {data} would read "
                f"the shards as images; give --out outside {data}"
            )
    sources = found.discover(config)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        entries, at = [], 0
        for split in SPLITS:
            items = sources.split(split)
            if items:
                writer = _write_litdata if kind == "litdata" else _write_split
                entries += writer(staging, split, items, count, size, at)
                at += len(items)
        manifest = {
            "format": "thaw-litdata" if kind == "litdata" else "thaw-shards",
            "version": 1,
            "name": sources.name,
            "classes": sources.class_names,
            "multilabel": sources.multilabel,
            "split_origin": sources.split_origin,
            "shards": entries,
        }
        (staging / CLASSES).write_text(json.dumps(sources.class_names, indent=1))
        (staging / MANIFEST).write_text(json.dumps(manifest))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    images = {s: sum(_count(e["samples"]) for e in entries if e["split"] == s) for s in SPLITS}
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return {
        "out": str(out),
        "shards": len(entries),
        "images": images,
        "bytes": total,
        "classes": len(sources.class_names),
        "split_origin": sources.split_origin,
    }


def _count(samples: list | int) -> int:
    return samples if isinstance(samples, int) else len(samples)


def _write_split(folder: Path, split: str, items: list[Item], count: int, size: float, at: int) -> list[dict]:
    """``items`` as shards ``<split>-%06d.tar`` of at most ``count`` images or about ``size`` bytes (a
    new shard starts before a sample that would take one past it), each then indexed by :func:`scan`.
    Not ``webdataset.ShardWriter``: it counts the members' bytes without their tar headers, so shards of
    small images came out ten times the size asked for."""
    tar_writer = _extra("webdataset").TarWriter
    files: list[Path] = []
    sink, held = None, 0
    try:
        for n, it in enumerate(items, start=at):
            sample = _encoded(it, n, split)
            need = sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if k != "__key__")
            if sink is None or held >= count or held and sink.tarstream.offset + need > size:
                if sink is not None:
                    sink.close()
                files.append(folder / f"{split}-{len(files):06d}.tar")
                sink, held = tar_writer(str(files[-1]), mtime=0), 0
            sink.write(sample)
            held += 1
    finally:
        if sink is not None:
            sink.close()
    return [{"file": f.name, "split": split, "samples": scan(str(f))} for f in files]


def _encoded(it: Item, n: int, split: str) -> dict:
    """One sample: the image file's own bytes (decoded later exactly as the file), or an in-memory
    array as a lossless PNG (uint8) or ``.npy`` (deeper), with its class index and original key."""
    content = it.source.open() if it.source is not None else it.array  # resharding shards: as read
    if isinstance(content, Blob):
        ext, data = content.name.rsplit(".", 1)[-1].lower(), content.getvalue()
        if ext not in IMAGE_MEMBERS:  # a LitData sample without a name: the format its bytes are in
            from PIL import Image

            ext = (Image.open(content).format or "png").lower()
    elif content is not None:
        array = np.asarray(content)
        buf = io.BytesIO()
        if array.dtype == np.uint8 and (array.ndim == 2 or array.ndim == 3 and array.shape[2] == 3):
            from PIL import Image

            Image.fromarray(array).save(buf, format="png")
            ext = "png"
        else:
            np.save(buf, array, allow_pickle=False)
            ext = "npy"
        data = buf.getvalue()
    else:
        ext = Path(it.key).suffix.lower().lstrip(".")
        if ext not in IMAGE_MEMBERS:
            raise ThawError(
                f"{it.key}: thaw shards copies .{', .'.join(IMAGE_MEMBERS)} images; convert it first"
            )
        try:
            data = Path(it.key).read_bytes()
        except OSError as err:
            raise ThawError(f"cannot read {it.key} ({err.strerror or err})") from None
    label = list(it.label) if isinstance(it.label, tuple) else it.label
    meta = {"key": it.key, "split": split, "label": label}
    sample = {"__key__": f"{n:08d}", ext: data, "json": json.dumps(meta).encode()}
    if isinstance(label, int):
        sample["cls"] = str(label).encode()
    return sample


# ---- LitData's optimized format


SAFE_SERIALIZERS = frozenset(
    {"bytes", "str", "text", "int", "float", "bool", "file", "json", "pil", "jpeg", "image", "numpy"}
    | {"no_header_numpy", "tensor", "no_header_tensor"}
)
"""LitData's serializers that decode plain bytes, numbers, text, JSON, arrays and images, none of which
unpickles. ``pickle`` (and ``graph``, which falls back to it) runs code from the dataset while reading it;
the rest (video, audio, nifti, mesh, pdf, tifffile) hand the bytes to third-party decoders thaw does not
need. A dataset whose fields use any other is refused unless the user trusts it (``--trust-pickle``)."""


def lit_formats(folder: str) -> dict[str, str]:
    """The serializer of every field of the LitData dataset in ``folder``, by field name, read from its
    ``index.json`` (as LitData resolves ``a:b``: ``b`` where it names a serializer, else ``a``)."""
    from litdata.streaming.serializers import _SERIALIZERS  # the names LitData resolves against

    try:
        config = json.loads(Path(folder, "index.json").read_bytes())["config"]
        formats = [str(f) for f in config["data_format"]]
        spec = json.loads(config["data_spec"]) if config.get("data_spec") else None
        spec = spec[-1] if isinstance(spec, list) and spec else spec  # [protocol, treespec]
        names = json.loads(spec["context"]) if isinstance(spec, dict) and spec.get("context") else None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ThawError(
            f"{folder}: not a readable LitData dataset ({err!r}); write it with thaw shards"
        ) from None
    if not isinstance(names, list) or len(names) != len(formats):
        names = [f"field {i}" for i in range(len(formats))]

    def key(fmt: str) -> str:
        head, _, sub = fmt.partition(":")
        return sub if sub in _SERIALIZERS else head

    return {str(name): key(fmt) for name, fmt in zip(names, formats)}


def check_serializers(folder: str, trust_pickle: bool) -> None:
    """Refuse, before any chunk is read, a LitData dataset with a field LitData would unpickle (or hand to
    a decoder outside :data:`SAFE_SERIALIZERS`), unless ``trust_pickle``."""
    if trust_pickle:
        return
    for field, serializer in lit_formats(folder).items():
        if serializer not in SAFE_SERIALIZERS:
            why = "unpickles: reading it would run code from the dataset"
            why = why if serializer in ("pickle", "graph") else "thaw does not read"
            raise ThawError(
                f"{folder}: field {field[:80]!r} is stored with LitData's {serializer[:40]!r} serializer, "
                f"which {why}; "
                f"rewrite it with bytes, numbers and JSON (thaw shards --shard-format litdata), or pass "
                f"--trust-pickle if you made this dataset yourself"
            )


class _Refused:
    """Stands in for every LitData serializer outside :data:`SAFE_SERIALIZERS` while a dataset is read
    untrusted: a chunk field of that kind raises instead of being decoded (a second line of defence,
    behind :func:`check_serializers`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def setup(self, data_format: str) -> None:
        pass

    def deserialize(self, data: bytes):
        raise ThawError(
            f"a LitData field uses the {self.name!r} serializer; thaw reads it only with --trust-pickle"
        )

    def can_serialize(self, item) -> bool:
        return False


def _refusing() -> dict:
    from litdata.streaming.serializers import _SERIALIZERS

    return {name: _Refused(name) for name in _SERIALIZERS if name not in SAFE_SERIALIZERS}


@dataclass(frozen=True)
class LitSample:
    """Sample ``index`` of the LitData dataset in ``folder`` (its ``index.json`` and chunks): ``image``
    holds the encoded file's bytes (thaw writes these), a Pillow image, an array or a tensor."""

    folder: str
    index: int
    name: str = ""
    trust_pickle: bool = False

    def open(self) -> np.ndarray | Blob:
        image = _lit_dataset(self.folder, self.trust_pickle)[self.index]["image"]
        if isinstance(image, (bytes, bytearray, memoryview)):
            data = bytes(image)
            if self.name.endswith(".npy"):
                return np.load(io.BytesIO(data), allow_pickle=False)
            return Blob(data, f"{self.folder}#{self.name or self.index}")
        if hasattr(image, "permute"):  # a torch tensor, [C, H, W] as torchvision decodes
            image = image.permute(1, 2, 0).squeeze(2) if image.ndim == 3 else image
            return np.ascontiguousarray(image.numpy())
        return np.asarray(image)  # a Pillow image or an array

    def fingerprint(self) -> str:
        index = Path(self.folder) / "index.json"
        stamp = f":{index.stat().st_mtime_ns}" if not is_remote(self.folder) and index.is_file() else ""
        return f"{self.folder}:{self.index}{stamp}"


_LIT: dict[tuple[str, int, bool], object] = {}  # (folder, pid, trusted) -> the open StreamingDataset


def _lit_dataset(folder: str, trust_pickle: bool = False):
    key = (folder, os.getpid(), trust_pickle)
    if key not in _LIT:
        litdata = _extra("litdata")
        check_serializers(folder, trust_pickle)
        try:
            serializers = None if trust_pickle else _refusing()
            _LIT[key] = litdata.StreamingDataset(folder, serializers=serializers)
        except (AssertionError, FileNotFoundError, ValueError, OSError) as err:
            raise ThawError(
                f"{folder}: not a readable LitData dataset ({err}); write it with thaw shards"
            ) from None
    return _LIT[key]


def claims_litdata(path: str) -> bool:
    """A local folder with LitData's ``index.json``, itself or in split folders (``train/``, ``val/``)."""
    p = Path(path)
    return p.is_dir() and (
        (p / "index.json").is_file() or any((d / "index.json").is_file() for d in _split_dirs(p))
    )


def find_litdata(path: str | Path, trust_pickle: bool = False) -> Sources:
    """The items of a LitData dataset: split folders (``train/``, ``val/``, ``test/``, each with its
    ``index.json``) or one folder (then a ``--split-file`` splits it); ``classes.json`` beside them. Each
    sample is read once here for its label and key (a ``meta`` JSON string: ``key``, ``label``, ``name``).
    A field LitData would unpickle is refused before any chunk is read, unless ``trust_pickle``."""
    root = str(path).rstrip("/")
    parts = [(str(d), found.split_name(d.name, root)) for d in _split_dirs(Path(root))]
    parts = [(d, s) for d, s in parts if (Path(d) / "index.json").is_file()] or [(root, None)]
    manifest = json.loads(read_small(f"{root}/{MANIFEST}") or b"{}")
    items = []
    for folder, split in parts:
        dataset = _lit_dataset(folder, trust_pickle)
        for i in range(len(dataset)):
            sample = dataset[i]
            meta = json.loads(sample["meta"]) if isinstance(sample.get("meta"), str) else {}
            label = meta.get("label", sample.get("label"))
            label = label.item() if hasattr(label, "item") else label
            key = meta.get("key") or f"{folder}#{i}"
            source = LitSample(folder, i, meta.get("name", ""), trust_pickle)
            items.append(Item(key, label, split, source=source))
    samples = [[it.key, "", 0, 0, it.label] for it in items]
    class_names = _class_names(root + "/", manifest, [(root, None, samples)])
    multilabel = bool(manifest.get("multilabel"))
    for it in items:
        it.label = _check_label(it.source.folder, it.key, it.label, class_names, multilabel)
    sources = Sources(Path(root).name, class_names, items, split_origin="shards", multilabel=multilabel)
    if parts[0][1] is None:
        sources.needs_split = (
            f"{root}: a LitData dataset without train/ and val/ folders needs a --split-file"
        )
    return sources


def _write_litdata(
    folder: Path, split: str, items: list[Item], count: int, size: float, at: int
) -> list[dict]:
    """``items`` as one LitData dataset in ``folder/split`` (chunks of ``count`` images or ``size`` bytes)."""
    writer_module = _extra("litdata.streaming.writer")
    limit = {"chunk_size": count} if count < 10**12 else {"chunk_bytes": int(size)}
    writer = writer_module.BinaryWriter(str(folder / split), **limit)
    for n, it in enumerate(items, start=at):
        sample = _encoded(it, n, split)
        ext = next(k for k in sample if k in IMAGE_MEMBERS)
        meta = {**json.loads(sample["json"]), "name": f"{n:08d}.{ext}"}
        # the key in a JSON string: a bare path would be read back as that file (litdata's FileSerializer)
        label = meta["label"] if isinstance(meta["label"], int) else -1  # multi-label: in meta only
        writer.add_item(n - at, {"image": sample[ext], "label": label, "meta": json.dumps(meta)})
    writer.done()
    writer.merge()
    return [{"file": f"{split}/", "split": split, "samples": len(items)}]


found.FINDERS.update(shards=find, litdata=find_litdata)
found.CLAIMS.update(shards=claims, litdata=claims_litdata)
found.TRUSTING.add("litdata")
