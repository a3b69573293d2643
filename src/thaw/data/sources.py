"""Finding labelled images: split folders, one folder of classes, a CSV, or a MedMNIST ``.npz``.

Discovery is cheap (paths and labels only); decoding happens in ``images.py`` once the model's
preprocessing is known.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thaw.core.config import DataConfig
from thaw.core.errors import ThawError
from thaw.core.file_prediction import IMAGE_EXTENSIONS
from thaw.core.files import write_atomic

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": ("train", "training"),
    "val": ("val", "valid", "validation"),
    "test": ("test", "testing"),
}


@dataclass
class Item:
    """One labelled image: a file path, or a key into in-memory pixels (``array``: HxW or HxWxC uint8, or
    HxW of any depth, scaled per image), or into a shard (``source``: a ``shards.Member`` that reads the
    image's bytes). ``label``: the class index, or for multi-label data one 0/1 per label (a tuple, in the
    order of ``Sources.class_names``)."""

    key: str
    label: int | tuple[int, ...]
    split: str | None = None
    array: np.ndarray | None = field(default=None, repr=False)
    source: object | None = field(default=None, repr=False)


@dataclass
class Sources:
    """Everything discovered: class names and items, each with its split (after :func:`assign_splits`).
    ``multilabel``: several labels per image (``class_names`` are the label names, each item's label a
    0/1 tuple); see ``thaw.metrics.multilabel``."""

    name: str
    class_names: list[str]
    items: list[Item]
    split_origin: str = "given"
    multilabel: bool = False
    needs_split: str | None = None  # why only a split file can split this data (the message), if so

    def split(self, name: str) -> list[Item]:
        return [it for it in self.items if it.split == name]


def discover(config: DataConfig) -> Sources:
    """Find the images and labels at ``config.path`` and give every item a split: the split file's, the
    data's own, or a stratified one seeded by ``config.split_seed``."""
    sources = find(config.path, config.format, config.trust_pickle)
    if config.split_file:
        apply_split_file(sources, Path(config.split_file))
    elif sources.needs_split:
        raise ThawError(sources.needs_split)
    else:
        assign_splits(sources, config.val_fraction, config.test_fraction, config.split_seed)
    check(sources)
    return sources


def find(path: str, fmt: str = "auto", trust_pickle: bool = False) -> Sources:
    """The labelled items at ``path``, in the layout ``fmt`` (``auto``: detected), splits as given.
    ``trust_pickle``: read a dataset whose format would unpickle (LitData's pickle serializer)."""
    if path.startswith("builtin:"):
        return builtin(path.removeprefix("builtin:"))
    for name, claims in CLAIMS.items():  # data that is not a local path (URLs, patterns) first
        if fmt == name or fmt == "auto" and claims(path):
            return FINDERS[name](path, trust_pickle) if name in TRUSTING else FINDERS[name](path)
    if not path or not Path(path).exists():
        raise ThawError(
            f"data path {path!r} does not exist; give a folder of class subfolders, a folder with train/ "
            f"and val/, a .csv of path,label (or path,<label1>,<label2>,... of 0/1 for multi-label), a "
            f"MedMNIST .npz, or shards (thaw shards)"
        )
    fmt = fmt if fmt != "auto" else detect_format(Path(path))
    return FINDERS[fmt](Path(path))


def detect_format(path: Path) -> str:
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".npz", ".csv"):
            return suffix[1:]
        raise ThawError(f"{path}: a data file must be .csv (path,label) or .npz (MedMNIST); got {suffix!r}")
    if _split_dirs(path).get("train"):
        return "split-folders"
    return "folder"


def _split_dirs(root: Path) -> dict[str, Path]:
    found = {}
    for split, aliases in SPLIT_ALIASES.items():
        for alias in aliases:
            if (root / alias).is_dir():
                found[split] = root / alias
                break
    return found


def split_name(value: str, where: str) -> str:
    """``train``, ``val`` or ``test`` for a split value in any case or alias (``Training``, ``valid``)."""
    text = value.strip().lower()
    for split, aliases in SPLIT_ALIASES.items():
        if text in aliases:
            return split
    raise ThawError(
        f"{where}: split {value!r} is not one of {', '.join(SPLITS)} (or training, valid, validation, "
        f"testing); fix that value"
    )


def _images_in_class_dirs(root: Path) -> dict[str, list[Path]]:
    """Every class folder's images. A folder without images, two folders that are one (a symlink), or
    one file in two classes is an error, not a class silently dropped or doubled."""
    classes, seen_dirs, owner, empty = {}, {}, {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        real = d.resolve()
        if real in seen_dirs:
            raise ThawError(
                f"class folders {seen_dirs[real]} and {d} are the same folder (a symlink); remove one"
            )
        seen_dirs[real] = d
        files = sorted(f for f in d.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if not files:
            empty.append(d)
            continue
        for f in files:
            first = owner.setdefault(f.resolve(), d.name)
            if first != d.name:
                raise ThawError(f"{f} is in two classes, {first} and {d.name} (a symlink?); keep one")
        classes[d.name] = files
    if classes and empty:  # (no images anywhere is the caller's "found 0 images")
        raise ThawError(
            f"class folder {empty[0]} has no images (extensions {', '.join(IMAGE_EXTENSIONS)}); "
            f"add images or move the folder out of {root}"
        )
    return classes


def _no_images(root: Path) -> ThawError:
    return ThawError(
        f"found 0 images in class subfolders of {root}; expected {root}/<class>/<image> "
        f"with extensions {', '.join(IMAGE_EXTENSIONS)}"
    )


def _split_folders(root: Path) -> Sources:
    dirs = _split_dirs(root)
    per_split = {split: _images_in_class_dirs(d) for split, d in dirs.items()}
    if not per_split.get("train"):
        raise _no_images(dirs.get("train", root / "train"))
    class_names = sorted(per_split["train"])
    index = {c: i for i, c in enumerate(class_names)}
    items = []
    for split, classes in per_split.items():
        for cls, files in classes.items():
            if cls not in index:
                raise ThawError(
                    f"class {cls!r} appears in {dirs[split]} but not in {dirs['train']}: "
                    f"every class needs training images (add them, or remove the folder)"
                )
            items += [Item(str(f), index[cls], split) for f in files]
    return Sources(root.name, class_names, items, split_origin="folders")


def _class_folder(root: Path) -> Sources:
    if not root.is_dir():
        raise ThawError(f"{root} is not a folder")
    classes = _images_in_class_dirs(root)
    if not classes:
        raise _no_images(root)
    class_names = sorted(classes)
    items = [Item(str(f), i, None) for i, c in enumerate(class_names) for f in classes[c]]
    return Sources(root.name, class_names, items, split_origin="stratified")


def _csv(path: Path) -> Sources:
    """``path,label[,split]``: one class per image. Without a ``label`` column but with two or more other
    columns (``path,effusion,nodule,...[,split]``), each of them holding 0 or 1: multi-label data, the
    column names being the label names."""
    with path.open(newline="", encoding="utf-8-sig") as fh:  # utf-8-sig: Excel's byte-order mark
        reader = csv.DictReader(fh)
        header = [c.strip() for c in reader.fieldnames or []]
        columns = [c.lower() for c in header]
        label_columns = [h for h, c in zip(header, columns) if h and c not in ("path", "split", "label")]
        multilabel = "path" in columns and "label" not in columns and len(label_columns) > 1
        if not multilabel and ("path" not in columns or "label" not in columns):
            raise ThawError(
                f"{path}: the CSV needs a header with columns path,label (optional: split), or for "
                f"multi-label data path and one 0/1 column per label; "
                f"found {', '.join(columns) or 'no header'}"
            )
        twice = sorted({c for c in columns if c and columns.count(c) > 1})
        if twice:
            raise ThawError(
                f"{path}: column {twice[0]!r} appears twice in the header; name every column once"
            )
        rows = [{k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader]
    if not rows:
        raise ThawError(f"{path}: the CSV has no rows")
    if multilabel:
        class_names = label_columns
        labels = [_binary_labels(path, line, r, label_columns) for line, r in enumerate(rows, start=2)]
    else:
        for line, r in enumerate(rows, start=2):
            if not r.get("path") or not r.get("label"):
                empty = "path" if not r.get("path") else "label"
                raise ThawError(
                    f"{path}, line {line}: the {empty} is empty; give every row a path and a label"
                )
        class_names = sorted({r["label"] for r in rows})
        index = {c: i for i, c in enumerate(class_names)}
        labels = [index[r["label"]] for r in rows]
    items, first_line = [], {}
    for line, (r, label) in enumerate(zip(rows, labels), start=2):
        file = (path.parent / r["path"]).resolve()
        if not file.is_file():
            raise ThawError(f"{path}: image {r['path']} (relative to the CSV's folder) does not exist")
        if file in first_line:
            raise ThawError(
                f"{path}: image {r['path']} is listed twice (lines {first_line[file]} and {line}); "
                f"list every image once, with {'its labels' if multilabel else 'one label'}"
            )
        first_line[file] = line
        split = split_name(r["split"], f"{path}, line {line}") if r.get("split") else None
        items.append(Item(str(file), label, split))
    has_split = any(it.split for it in items)
    origin = "given" if has_split else "stratified"
    return Sources(path.stem, class_names, items, split_origin=origin, multilabel=multilabel)


def _binary_labels(path: Path, line: int, row: dict[str, str], names: list[str]) -> tuple[int, ...]:
    """One multi-label CSV row's 0/1 values, in the order of ``names``."""
    if not row.get("path"):
        raise ThawError(f"{path}, line {line}: the path is empty; give every row a path")
    values = []
    for name in names:
        text = row.get(name.lower(), "")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if value not in (0.0, 1.0):
            raise ThawError(
                f"{path}, line {line}: column {name!r} holds {text!r}; multi-label columns hold 0 or 1 "
                f"(1: the image has that label)"
            )
        values.append(int(value))
    return tuple(values)


def _npz(path: Path) -> Sources:
    try:
        data = np.load(path, allow_pickle=False)  # never unpickle: an object array could run code
    except (OSError, ValueError, EOFError) as err:
        raise ThawError(f"{path}: cannot read as .npz ({err}); save it with numpy.savez") from err
    if not hasattr(data, "files"):
        raise ThawError(f"{path}: holds one array, not an .npz archive of train_images, train_labels, ...")
    if "train_images" not in data or "train_labels" not in data:
        raise ThawError(
            f"{path}: expected MedMNIST keys train_images, train_labels, val_*, test_*; "
            f"found {', '.join(data.files)}"
        )
    items = []
    labels_seen = set()
    widths = {}  # labels per image, per split: 1 (single-label) or K (multi-label)
    for split in SPLITS:
        if f"{split}_images" not in data:
            continue
        if f"{split}_labels" not in data:
            raise ThawError(f"{path}: has {split}_images but no {split}_labels; add the labels")
        try:
            images, labels = data[f"{split}_images"], data[f"{split}_labels"]
        except (OSError, ValueError) as err:  # object arrays (pickles) and damaged members
            raise ThawError(f"{path}: cannot read {split}_images/{split}_labels ({err})") from err
        _check_npz_arrays(path, split, images, labels)
        widths[split] = labels.shape[1] if labels.ndim == 2 else 1
        if len(set(widths.values())) > 1:
            shapes = ", ".join(f"{s}_labels (N, {k})" for s, k in widths.items())
            raise ThawError(
                f"{path}: the splits disagree on the labels per image ({shapes}); give them all one shape"
            )
        if widths[split] > 1:  # multi-label, e.g. ChestMNIST: one 0/1 column per label
            bad = labels[(labels != 0) & (labels != 1)]
            if bad.size:
                raise ThawError(
                    f"{path}: {split}_labels has shape {labels.shape}, {labels.shape[1]} labels per image "
                    f"(multi-label), which must be 0 or 1; found {bad.flat[0]}"
                )
            items += [
                Item(f"{split}_images[{i}]", tuple(int(v) for v in y), split, images[i])
                for i, y in enumerate(labels)
            ]
            continue
        labels = labels.reshape(-1).astype(int)
        labels_seen.update(labels.tolist())
        items += [Item(f"{split}_images[{i}]", int(y), split, images[i]) for i, y in enumerate(labels)]
    width = widths["train"]
    if width > 1:
        names = _npz_label_names(path, data, width)
        return Sources(path.stem, names, items, split_origin="given", multilabel=True)
    class_names = [str(c) for c in range(max(labels_seen) + 1)]
    return Sources(path.stem, class_names, items, split_origin="given")


def _npz_label_names(path: Path, data, width: int) -> list[str]:
    """A multi-label ``.npz``'s label names: its ``label_names`` array if it has one, else label_0, ..."""
    if "label_names" not in data:
        return [f"label_{k}" for k in range(width)]
    try:
        names = [str(n).strip() for n in np.asarray(data["label_names"]).reshape(-1)]
    except (OSError, ValueError) as err:
        raise ThawError(f"{path}: cannot read label_names ({err}); save it as a string array") from err
    if len(names) != width or len(set(names)) != width or not all(names):
        raise ThawError(
            f"{path}: label_names holds {len(names)} name(s) for {width} labels per image; give {width} "
            f"distinct, non-empty names (or leave label_names out)"
        )
    return names


def _check_npz_arrays(path: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    if not (images.ndim == 3 or images.ndim == 4 and images.shape[3] in (1, 3)) or 0 in images.shape:
        raise ThawError(
            f"{path}: {split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, 1 or 3) "
            f"(a 2D MedMNIST set; the 3D ones, (N, D, H, W), are volumes thaw does not classify)"
        )
    deep = np.issubdtype(images.dtype, np.integer) and images.ndim == 3  # e.g. uint16 greyscale scans
    if images.dtype != np.uint8 and not deep:
        raise ThawError(
            f"{path}: {split}_images has dtype {images.dtype} and shape {images.shape}; thaw reads uint8 "
            f"pixels, or greyscale (N, H, W) integers of any depth (each image scaled min to max); "
            f"convert floats with (x * 255).astype(np.uint8) or similar"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.ndim not in (1, 2) or 0 in labels.shape[1:]:
        raise ThawError(
            f"{path}: {split}_labels must be integers of shape (N,) or (N, 1), or (N, K) of 0/1 for "
            f"multi-label data; got {labels.dtype} {labels.shape}"
        )
    if len(labels) != len(images):
        raise ThawError(
            f"{path}: {split}_images holds {len(images)} images but {split}_labels {len(labels)} labels; "
            f"they must match one to one"
        )
    if labels.size and labels.min() < 0:
        raise ThawError(f"{path}: {split}_labels has negative values; labels are class indices 0, 1, ...")


FINDERS = {"split-folders": _split_folders, "folder": _class_folder, "csv": _csv, "npz": _npz}
CLAIMS: dict = {}  # format -> whether a path is data of that format (thaw.data.shards adds its own)
TRUSTING: set = set()  # formats whose finder takes trust_pickle (a format that can hold pickles)


def evaluation_items(path: str, fmt: str = "auto") -> tuple[list[Item], str, list[str]]:
    """Labelled items to evaluate on: the test split if the data has one, else val, else every image.
    Returns the items, the split's name and the dataset's class names (labels index into them)."""
    sources = find(str(path), fmt)  # as thaw fit takes it
    for split in ("test", "val"):
        if sources.split(split):
            return sources.split(split), split, sources.class_names
    return sources.items, "all", sources.class_names


def from_arrays(name: str, images: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Sources:
    """Sources from in-memory uint8 images (N, H, W[, C]); split later by :func:`assign_splits`."""
    items = [Item(f"{name}[{i}]", int(y), None, images[i]) for i, y in enumerate(labels)]
    return Sources(name, list(class_names), items, split_origin="stratified")


BUILTIN = ("digits",)


def builtin(name: str) -> Sources:
    """Real datasets that ship inside a dependency, for offline demos. ``digits``: scikit-learn's 1797
    handwritten digits, 8x8 greyscale scans (values 0-16) from UCI, far from ImageNet."""
    if name != "digits":
        raise ThawError(
            f"unknown built-in dataset {name!r}; available: {', '.join('builtin:' + b for b in BUILTIN)}"
        )
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return from_arrays("digits", images, digits.target, [str(c) for c in digits.target_names])


def stratified_split(labels: list[int], val_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Per class, a seeded shuffle cut into test, val and train; every class keeps >= 1 training image."""
    rng = np.random.default_rng(seed)
    out = ["train"] * len(labels)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    for _, idx in sorted(by_class.items()):
        idx = list(rng.permutation(idx))
        n = len(idx)
        n_test = min(round(n * test_fraction), max(0, n - 1))
        n_val = min(round(n * val_fraction), max(0, n - 1 - n_test))
        for i in idx[:n_test]:
            out[i] = "test"
        for i in idx[n_test : n_test + n_val]:
            out[i] = "val"
    return out


def assign_splits(sources: Sources, val_fraction: float, test_fraction: float, seed: int) -> None:
    """Fill in missing splits: all of them (stratified), or carve val from train when only val is absent."""
    if all(it.split is None for it in sources.items):
        keys = _strata(sources, sources.items)
        for it, split in zip(sources.items, stratified_split(keys, val_fraction, test_fraction, seed)):
            it.split = split
        return
    if any(it.split is None for it in sources.items):
        raise ThawError(f"{sources.name}: some items have a split and some do not; give every row a split")
    if not sources.split("val"):
        train = sources.split("train")
        fraction = val_fraction or 0.15
        for it, split in zip(train, stratified_split(_strata(sources, train), fraction, 0.0, seed)):
            it.split = split
        sources.split_origin += "+val-from-train"


def _strata(sources: Sources, items: list[Item]) -> list[int]:
    """What a stratified split keeps in proportion: the class, or for multi-label data :func:`strata`."""
    labels = [it.label for it in items]
    return strata(labels) if sources.multilabel else labels


def strata(labels: list[tuple[int, ...]]) -> list[int]:
    """Multi-label images have no one class to stratify on: each image's stratum is its rarest positive
    label (by positives among ``labels``), or ``K`` for an image without any, so every label, the rare
    ones first, is spread over train, val and test."""
    y = np.asarray(labels, dtype=np.int64).reshape(len(labels), -1)
    rarity = np.argsort(np.argsort(y.sum(0), kind="stable"), kind="stable")  # 0: the rarest label
    out = []
    for row in y:
        positive = np.flatnonzero(row)
        out.append(int(positive[np.argmin(rarity[positive])]) if len(positive) else y.shape[1])
    return out


def apply_split_file(sources: Sources, split_file: Path) -> None:
    """Reuse a run's ``split.csv`` (columns key, split): the same images in the same splits."""
    if not split_file.is_file():
        raise ThawError(f"--split-file {split_file} does not exist; use the split.csv of an earlier run")
    with split_file.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not {"key", "split"} <= set(reader.fieldnames or []):
            raise ThawError(
                f"--split-file {split_file} needs columns key and split (found "
                f"{', '.join(reader.fieldnames or []) or 'none'}); use the split.csv of an earlier run"
            )
        given = {
            row["key"]: "unlabelled"  # the training images a label budget left out (data/budget.py)
            if row["split"] == "unlabelled"
            else split_name(row["split"] or "", f"--split-file {split_file}, line {line}")
            for line, row in enumerate(reader, start=2)
        }
    # keys written relative (``data/cat/1.png``) match the same files given by absolute path, and back
    resolved = {os.path.abspath(k): v for k, v in given.items()}
    for it in sources.items:
        if it.key not in given and it.array is None and os.path.abspath(it.key) in resolved:
            given[it.key] = resolved[os.path.abspath(it.key)]
    missing = [it.key for it in sources.items if it.key not in given]
    if missing:
        raise ThawError(
            f"--split-file {split_file} does not list {len(missing)} image(s) found in the data, "
            f"e.g. {missing[0]}; was it written for this dataset?"
        )
    for it in sources.items:
        it.split = given[it.key]
    sources.split_origin = f"file:{split_file}"


def check(sources: Sources) -> None:
    """Errors a user can act on: too few classes, a split without images, labels unseen in training."""
    if len(sources.class_names) < 2:
        raise ThawError(
            f"{sources.name}: found only one class ({sources.class_names[0]!r}); a classifier "
            f"needs at least two class folders or labels"
        )
    for split in ("train", "val"):
        if not sources.split(split):
            raise ThawError(f"{sources.name}: the {split} split is empty; add images or lower the fractions")
    if sources.multilabel:  # a label without positives is a warning (label_gaps), not an error
        return
    train_labels = Counter(it.label for it in sources.split("train"))
    empty = [
        c for i, c in enumerate(sources.class_names) if i not in train_labels and i not in _labels(sources)
    ]
    if empty:
        raise ThawError(
            f"{sources.name}: class(es) {', '.join(empty)} have no images at all (label indices with "
            f"no image); relabel the data so labels run 0..{len(sources.class_names) - 1 - len(empty)}"
        )
    for split in ("val", "test"):
        unseen = {it.label for it in sources.split(split)} - set(train_labels)
        if unseen:
            names = ", ".join(sources.class_names[i] for i in sorted(unseen))
            raise ThawError(
                f"{sources.name}: class(es) {names} appear in {split} but not in train; "
                f"add training images for them"
            )


def _labels(sources: Sources) -> set[int]:
    return {it.label for it in sources.items}


def label_gaps(sources: Sources) -> str | None:
    """Multi-label data: a warning line naming the labels without a positive image in train or val
    (they train as never present, or have no validation AUC and keep the threshold 0.5); else None."""
    gaps = []
    for split in ("train", "val"):
        items = sources.split(split)
        if not sources.multilabel or not items:
            continue
        positives = np.asarray([it.label for it in items], dtype=np.int64).sum(0)
        missing = [name for name, count in zip(sources.class_names, positives) if count == 0]
        if missing:
            gaps.append(f"{', '.join(missing)} in {split}")
    if not gaps:
        return None
    return (
        f"{sources.name}: label(s) without a positive image: {'; '.join(gaps)}; such a label has no AUC "
        f"there and keeps the threshold 0.5 (add positive images, or try another --split-seed)"
    )


def write_split(sources: Sources, path: Path) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["key", "label", "class", "split"])
    for it in sources.items:
        if sources.multilabel:  # label: the 0/1 values; class: the names of the labels present
            present = [n for n, v in zip(sources.class_names, it.label) if v]
            writer.writerow([it.key, ";".join(map(str, it.label)), ";".join(present), it.split])
        else:
            writer.writerow([it.key, it.label, sources.class_names[it.label], it.split])
    write_atomic(path, text.getvalue())
