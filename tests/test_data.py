import csv
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_class_folder

from thaw.core.config import DataConfig
from thaw.core.errors import ThawError
from thaw.data import decode_sources, discover, eval_transform, train_transform
from thaw.data.sources import stratified_split
from thaw.models.contract import Preprocessing

PRE = Preprocessing(size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def test_class_folder_is_split_stratified_and_reproducibly(class_folder):
    a = discover(DataConfig(path=str(class_folder), val_fraction=0.25, test_fraction=0.25, split_seed=1))
    b = discover(DataConfig(path=str(class_folder), val_fraction=0.25, test_fraction=0.25, split_seed=1))
    c = discover(DataConfig(path=str(class_folder), val_fraction=0.25, test_fraction=0.25, split_seed=2))
    assert a.class_names == ["blue", "red"]
    assert [it.split for it in a.items] == [it.split for it in b.items]
    assert [it.split for it in a.items] != [it.split for it in c.items]
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        assert Counter(it.label for it in a.split(split)) == {0: n, 1: n}
    for it in a.items:  # labels follow the folder names
        assert a.class_names[it.label] in it.key


def test_stratified_split_keeps_a_training_image_per_class():
    splits = stratified_split([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], 0.5, 0.5, seed=0)
    assert splits[:2].count("train") == 1


def test_split_folders(split_folders):
    s = discover(DataConfig(path=str(split_folders)))
    assert s.split_origin == "folders"
    assert {k: len(s.split(k)) for k in ("train", "val", "test")} == {"train": 16, "val": 6, "test": 6}


def test_csv_with_relative_paths(class_folder):
    rows = [(f"shapes/{p.parent.name}/{p.name}", p.parent.name) for p in sorted(class_folder.rglob("*.png"))]
    path = class_folder.parent / "labels.csv"
    with path.open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label"), *rows])
    s = discover(DataConfig(path=str(path)))
    assert len(s.items) == 16 and s.class_names == ["blue", "red"]
    assert all(s.class_names[it.label] in it.key for it in s.items)


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    path = tmp_path / "tiny.npz"
    np.savez(path, **arrays)
    s = discover(DataConfig(path=str(path)))
    assert [len(s.split(k)) for k in ("train", "val", "test")] == [12, 4, 4]
    assert [it.label for it in s.split("val")] == [0, 1, 0, 1]
    decoded = decode_sources(s, PRE, channels=3)
    assert decoded["train"].images[0].shape == (3, 36, 36)  # greyscale replicated to 3 channels
    x = eval_transform(PRE)(decoded["val"].images[0])
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32


def test_builtin_digits():
    s = discover(DataConfig(path="builtin:digits"))
    assert len(s.items) == 1797 and len(s.class_names) == 10


def test_train_transform_is_random_and_eval_is_not(class_folder):
    s = discover(DataConfig(path=str(class_folder)))
    img = decode_sources(s, PRE, 3)["train"].images[0]
    train = train_transform(PRE, DataConfig())
    torch.manual_seed(0)
    assert not torch.equal(train(img), train(img))
    assert torch.equal(eval_transform(PRE)(img), eval_transform(PRE)(img))


def test_undecodable_images_are_reported_and_skipped_or_rejected(class_folder):
    (class_folder / "red" / "broken.png").write_bytes(b"not an image")
    s = discover(DataConfig(path=str(class_folder), val_fraction=0.2, test_fraction=0.0))
    warnings = []
    decoded = decode_sources(s, PRE, 3, strict=False, warn=warnings.append)
    assert "broken.png" in warnings[0]
    assert sum(len(d.images) for d in decoded.values()) == 16
    with pytest.raises(ThawError, match="broken.png.*--strict-images"):
        decode_sources(s, PRE, 3, strict=True)


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty", "found 0 images"),
        ("one-class", "only one class"),
        ("unseen", "appear.* in val but not in train|appears in .* but not in"),
        ("missing", "does not exist"),
    ],
)
def test_bad_data_gives_one_clear_error(tmp_path, case, message):
    root = tmp_path / "d"
    if case == "empty":
        (root / "a").mkdir(parents=True)
    elif case == "one-class":
        make_class_folder(root, classes=("red",))
    elif case == "unseen":
        make_class_folder(root / "train", classes=("red", "blue"))
        make_class_folder(root / "val", classes=("red", "green"))
    elif case == "missing":
        root = tmp_path / "nowhere"
    with pytest.raises(ThawError, match=message):
        discover(DataConfig(path=str(root)))


def test_split_file_is_reused(class_folder, tmp_path):
    from thaw.data import write_split

    a = discover(DataConfig(path=str(class_folder), split_seed=3))
    write_split(a, tmp_path / "split.csv")
    b = discover(DataConfig(path=str(class_folder), split_file=str(tmp_path / "split.csv"), split_seed=99))
    assert [(it.key, it.split) for it in a.items] == [(it.key, it.split) for it in b.items]
