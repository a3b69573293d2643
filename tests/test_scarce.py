"""Scarce labels: label budgets, AdaBN, pseudo-labels, thaw curve and --folds, on tiny generated data."""

import csv
import json
import time
from pathlib import Path

import pytest
import torch
from conftest import make_class_folder, tiny_config, tiny_flags

import thaw
from thaw.cli import main
from thaw.core.config import DataConfig, RunConfig
from thaw.core.errors import ThawError
from thaw.data import discover
from thaw.data.budget import UNLABELLED, apply_budget
from thaw.data.sources import apply_split_file, write_split


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """3 classes x 20 images: 14 train per class after thaw's 15/15 split."""
    return make_class_folder(tmp_path_factory.mktemp("scarce") / "shapes", 20, ("red", "blue", "green"))


def budgeted(data: Path, seed: int = 0, **budget):
    config = DataConfig(path=str(data), **budget)
    config.validate()
    return apply_budget(discover(config), config, seed)


def per_class(sources, split: str) -> list[int]:
    return [sum(1 for it in sources.split(split) if it.label == c) for c in range(len(sources.class_names))]


def test_budget_is_stratified_seeded_and_leaves_val_and_test_alone(shapes):
    full = discover(DataConfig(path=str(shapes)))
    a = budgeted(shapes, labels_per_class=3)
    assert per_class(a, "train") == [3, 3, 3]
    assert per_class(a, UNLABELLED) == [n - 3 for n in per_class(full, "train")]
    assert [it.key for it in a.split("val")] == [it.key for it in full.split("val")]
    assert [it.key for it in a.split("test")] == [it.key for it in full.split("test")]
    assert {it.key for it in a.split("train")} == {
        it.key for it in budgeted(shapes, labels_per_class=3).split("train")
    }
    other = budgeted(shapes, seed=1, labels_per_class=3)
    assert {it.key for it in a.split("train")} != {it.key for it in other.split("train")}
    fixed = budgeted(shapes, seed=1, labels_per_class=3, label_seed=0)  # --label-seed pins the subset
    assert {it.key for it in a.split("train")} == {it.key for it in fixed.split("train")}
    half = budgeted(shapes, label_fraction=0.5)
    assert per_class(half, "train") == [round(n * 0.5) for n in per_class(full, "train")]
    assert full.split(UNLABELLED) == []  # the discovered sources are not changed


def test_budget_survives_split_csv_so_resume_sees_the_same_subset(shapes, tmp_path):
    a = budgeted(shapes, label_fraction=0.3)
    write_split(a, tmp_path / "split.csv")
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    assert sum(r["split"] == UNLABELLED for r in rows) == len(a.split(UNLABELLED)) > 0
    again = discover(DataConfig(path=str(shapes)))
    apply_split_file(again, tmp_path / "split.csv")
    again = apply_budget(again, DataConfig(path=str(shapes), label_fraction=0.3), seed=5)  # not redrawn
    assert [(it.key, it.split) for it in again.items] == [(it.key, it.split) for it in a.items]


@pytest.mark.parametrize(
    "budget, message",
    [
        ({"labels_per_class": 15}, "larger than class"),
        ({"label_fraction": 0.01}, "with no labelled image"),
        ({"labels_per_class": 2, "label_fraction": 0.5}, "give one of them"),
        ({"label_fraction": 1.5}, "must be in (0, 1]"),
        ({"labels_per_class": 0}, "at least 1"),
    ],
)
def test_bad_budgets_are_one_clear_error(shapes, budget, message):
    with pytest.raises(ThawError, match=message.replace("(", r"\(").replace("]", r"\]")):
        budgeted(shapes, **budget)


def test_adabn_changes_only_batch_norm_buffers():
    from thaw.core.config import ModelConfig
    from thaw.data import eval_transform
    from thaw.models import build_classifier
    from thaw.train.adapt import adabn, batch_norms

    model = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, ["a", "b"], 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bn_buffers = {
        f"backbone.{name}.{b}"
        for name, m in model.backbone.named_modules()
        if m in batch_norms(model.backbone)
        for b in ("running_mean", "running_var", "num_batches_tracked")
    }
    momenta = [m.momentum for m in batch_norms(model.backbone)]
    images = [torch.randint(0, 255, (3, 36, 36), dtype=torch.uint8) for _ in range(17)]  # last batch of 1
    model.train()
    assert adabn(model, images, eval_transform(model.preprocessing), batch_size=8) == len(
        batch_norms(model.backbone)
    )
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= bn_buffers
    assert {k for k in bn_buffers if "running_mean" in k} <= changed
    assert model.training and [m.momentum for m in batch_norms(model.backbone)] == momenta


def test_pseudo_label_selection_is_confident_and_class_balanced():
    from thaw.train.adapt import select

    probs = torch.tensor([[0.99, 0.01], [0.97, 0.03], [0.95, 0.05], [0.5, 0.5], [0.05, 0.95], [0.2, 0.8]])
    # 4 confident predictions (3 of class 0, 1 of class 1); class 0 may have half of them
    kept = select(probs, 0.9, torch.tensor([0.5, 0.5]))
    assert kept.tolist() == [0, 1, 4]
    assert select(probs, 0.9, torch.tensor([0.25, 0.75])).tolist() == [0, 4]
    assert select(probs, 0.999, torch.tensor([0.5, 0.5])).tolist() == []


def test_fit_with_budget_adabn_and_pseudo_labels(shapes, tmp_path):
    config = tiny_config(
        shapes,
        tmp_path / "run",
        **{
            "data.labels_per_class": 4,
            "adabn": True,
            "pseudo_labels": True,
            "pseudo_threshold": 0.4,  # 3 classes, a random-weights tiny model: low, so some pass
        },
    )
    result = thaw.fit(config, quiet=True)
    s = json.loads((result.path / "summary.json").read_text())
    assert s["budget"]["labelled"] == [4, 4, 4] and sum(s["budget"]["unlabelled"]) == 3 * 10
    assert s["images"]["train"] == 12
    assert s["adabn"]["images"] == 42 and s["adabn"]["layers"] > 0
    p = s["pseudo_labels"]
    assert p["images"] == 30 and 0 < p["kept"] <= p["confident"] and 0 <= p["accuracy"] <= 1
    assert (
        "pseudo" in s["phases"]
        and p["after"]["test"]["accuracy"] == s["phases"]["pseudo"]["test"]["accuracy"]
    )
    assert p["before"]["test"]["accuracy"] == s["phases"][p["labelled_with"]]["test"]["accuracy"]
    rows = list(csv.DictReader((result.path / "split.csv").open()))
    assert sum(r["split"] == UNLABELLED for r in rows) == 30


def test_unlabelled_inputs_that_cannot_work_are_one_line(shapes, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images")
    base = ["fit", str(shapes), *tiny_flags(), "--quiet"]
    cases = [
        (
            [*base, "--pseudo-labels", "--unlabeled", str(empty), "--out", str(tmp_path / "a")],
            "has no images",
        ),
        ([*base, "--pseudo-labels", "--out", str(tmp_path / "b")], "needs unlabelled images"),
        ([*base, "--unlabeled", str(empty), "--out", str(tmp_path / "c")], "add --pseudo-labels"),
        (
            [*base, "--adabn", "--adabn-data", str(tmp_path / "nope"), "--out", str(tmp_path / "d")],
            "no such folder",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not any((tmp_path / n).exists() for n in "abcd")  # refused before any run folder


@pytest.mark.slow  # about 25 s: four tiny runs
def test_curve_runs_every_budget_and_seed_then_skips_finished_runs(shapes, tmp_path, capsys):
    from thaw.studies.curve import parse_budgets

    assert [b.label for b in parse_budgets("50%, 100%,5")] == ["50%", "100%", "5/class"]
    with pytest.raises(ThawError, match="not a budget"):
        parse_budgets("10%,abc")
    out = tmp_path / "curve"
    args = [
        "curve",
        str(shapes),
        *tiny_flags(),
        "--phase2-epochs",
        "1",
        "--budgets",
        "3,100%",
        "--seeds",
        "2",
    ]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 runs (0 finished, 4 to run)" in printed and "| 3/class | 9 |" in printed
    result = json.loads((out / "curve.json").read_text())
    assert [(r["budget"], r["seed"], r["labelled"]) for r in result["runs"]] == [
        ("3/class", 0, 9),
        ("3/class", 1, 9),
        ("100%", 0, 42),
        ("100%", 1, 42),
    ]
    assert all(r["probe"] is not None and r["model"] is not None for r in result["runs"])
    assert (out / "curve.png").stat().st_size > 1000
    stamp = (out / "frac100-seed1" / "summary.json").stat().st_mtime_ns
    start = time.perf_counter()
    assert main([*args, "--out", str(out)]) == 0
    assert "(4 finished, 0 to run)" in capsys.readouterr().out and time.perf_counter() - start < 10
    assert (out / "frac100-seed1" / "summary.json").stat().st_mtime_ns == stamp
    assert main([*args, "--out", str(out), "--lr", "0.01"]) == 2  # other settings: not mixed in
    assert "other settings (lr" in capsys.readouterr().err


def test_folds_cross_validate_with_a_confidence_interval(shapes, tmp_path, capsys):
    from thaw.studies.folds import fold_sources, interval

    sources = discover(DataConfig(path=str(shapes)))
    parts = fold_sources(sources, 3, seed=0)
    vals = [{it.key for it in p.split("val")} for p in parts]
    pool = {it.key for it in sources.items if it.split in ("train", "val")}
    assert set().union(*vals) == pool and sum(map(len, vals)) == len(pool)  # each image validates once
    assert all({it.key for it in p.split("test")} == {it.key for it in sources.split("test")} for p in parts)
    ci = interval([0.8, 0.9, 1.0])
    assert ci["mean"] == pytest.approx(0.9) and ci["ci95"][0] == pytest.approx(
        0.9 - 4.303 * 0.1 / 3**0.5, 1e-3
    )
    with pytest.raises(ThawError, match="fewer than the folds"):
        fold_sources(sources, 50, seed=0)

    out = tmp_path / "cv"
    assert (
        main(
            [
                "fit",
                str(shapes),
                *tiny_flags(),
                "--phase2-epochs",
                "1",
                "--quiet",
                "--folds",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    cv = json.loads((out / "cv.json").read_text())
    assert cv["folds"] == 2 and len(cv["per_fold"]) == 2 and set(cv["summary"]) == {"val", "test"}
    assert "95% CI" in capsys.readouterr().out
    # each fold an ordinary run folder: its own config (the user's settings, its own out), and a split.csv
    # whose val part is its fold: the two folds validate disjoint halves of train+val, test the same images
    config = RunConfig.from_yaml(out / "fold1" / "config.yaml")
    assert config.out == str(out / "fold1") and config.data.path == str(shapes) and config.phase2.epochs == 1
    splits = [
        {row["key"]: row["split"] for row in csv.DictReader((out / f"fold{i}" / "split.csv").open())}
        for i in range(2)
    ]
    folds = [{k for k, split in s.items() if split == "val"} for s in splits]
    assert folds[0] and folds[1] and not folds[0] & folds[1]
    assert folds[0] | folds[1] == {k for k, split in splits[0].items() if split in ("train", "val")}
    tests = [{k for k, split in s.items() if split == "test"} for s in splits]
    assert tests[0] == tests[1]
