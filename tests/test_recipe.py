import csv

import pytest

import thaw
from thaw.config import override
from thaw.train.recipe import choose_final, gain


def tiny(data, out, **changes):
    return override(
        thaw.RunConfig(),
        {
            "data.path": str(data),
            "data.image_size": 32,
            "data.batch_size": 8,
            "model.name": "mobilenet_v3_small",
            "model.weights": "none",
            "phase1.epochs": 2,
            "phase2.epochs": 1,
            "out": str(out),
            **changes,
        },
    )


def losses(run):
    return [
        (r["phase"], r["train_loss"], r["val_loss"]) for r in csv.DictReader((run / "metrics.csv").open())
    ]


def test_same_seed_same_run_on_cpu(class_folder, tmp_path):
    a = thaw.fit(tiny(class_folder, tmp_path / "a"), quiet=True)
    b = thaw.fit(tiny(class_folder, tmp_path / "b"), quiet=True)
    assert losses(a.path) == losses(b.path)
    c = thaw.fit(tiny(class_folder, tmp_path / "c", seed=1), quiet=True)
    assert losses(a.path) != losses(c.path)


def test_fine_tune_from_the_start(class_folder, tmp_path):
    result = thaw.fit(tiny(class_folder, tmp_path / "ft", **{"phase1.epochs": 0}), quiet=True)
    assert "phase1" not in result.summary and result.summary["final_phase"] == "phase2"
    assert result.summary["gain"] == {}


def test_unfreeze_last_n_groups(class_folder, tmp_path):
    result = thaw.fit(tiny(class_folder, tmp_path / "n", unfreeze="2"), quiet=True)
    assert result.summary["phase2"]["trainable_groups"] == f"2/{len(result.model.layer_groups)}"


def test_final_phase_keeps_phase1_when_fine_tuning_hurts():
    p1 = {"val": {"accuracy": 0.9, "balanced_accuracy": 0.9, "macro_f1": 0.9, "auc": 0.95}}
    worse = {"val": {"accuracy": 0.8, "balanced_accuracy": 0.8, "macro_f1": 0.8, "auc": 0.9}}
    assert choose_final({"phase1": p1, "phase2": worse}) == "phase1"
    assert choose_final({"phase1": p1, "phase2": p1}) == "phase2"
    assert gain({"phase1": p1, "phase2": worse})["val"]["accuracy"] == pytest.approx(-0.1)


def test_failed_run_leaves_no_complete_looking_folder(class_folder, tmp_path):
    (tmp_path / "bad").mkdir()
    config = tiny(class_folder, tmp_path / "bad")
    with pytest.raises(thaw.ThawError, match="already exists"):
        thaw.fit(config, quiet=True)
    assert not any((tmp_path / "bad").iterdir())  # the existing folder is untouched
