"""The command line end to end on generated images: run folder, predict, evaluate, errors."""

import csv
import io
import json
import subprocess
import sys
from contextlib import redirect_stdout

import pytest
import yaml
from conftest import tiny_flags
from zygote import run_thaw

from thaw.cli import main

TINY = [*tiny_flags(), "--phase1-epochs", "2", "--phase2-epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import make_class_folder

    root = tmp_path_factory.mktemp("cli")
    data = make_class_folder(root / "shapes", per_class=10)
    out = root / "runs" / "first"
    assert main(["fit", str(data), *TINY, "--out", str(out)]) == 0
    return data, out


def test_fit_writes_a_complete_run_folder(run):
    data, out = run
    for name in (
        "config.yaml",
        "split.csv",
        "metrics.csv",
        "summary.json",
        "curves.png",
        "confusion.png",
        "model.safetensors",
    ):
        assert (out / name).is_file(), name
    assert not out.with_name("first.incomplete").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["phases"]) == ["phase1", "phase2"]
    for phase in summary["phases"].values():
        for split in ("val", "test"):
            assert 0.0 <= phase[split]["accuracy"] <= 1.0
    phase2 = summary["phases"]["phase2"]
    assert phase2["backbone_lr"] > 0  # the LR ratio itself: read from the optimizer (test_optim.py)
    assert set(summary["gain"]["phase2"]["val"]) >= {"accuracy", "auc"}
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [r["phase"] for r in rows] == ["phase1", "phase2"]  # phase 1 solved on cached features: one row
    assert float(rows[0]["lr_backbone"]) == 0.0 and float(rows[1]["lr_backbone"]) > 0
    assert summary["phases"]["phase1"]["solver"]["mode"] == "cached"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["data"]["path"] == str(data) and config["out"] == str(out)


def test_predict_table_and_csv(run):
    data, out = run
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        assert main(["predict", str(out), str(data / "red"), "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert len(rows) == 10 and {"p_red", "p_blue"} <= set(rows[0])
    assert all(r["prediction"] in ("red", "blue") for r in rows)
    import thaw

    predictor = thaw.load(out)
    preds, failed = predictor.predict_files([data / "blue" / "blue_0.png"])
    assert preds[0].label in ("red", "blue") and not failed


def test_evaluate_scores_the_runs_own_test_split_never_training_images(run, capsys):
    data, out = run
    test_keys = {r["key"] for r in csv.DictReader((out / "split.csv").open()) if r["split"] == "test"}
    assert main(["evaluate", str(out), str(data)]) == 0
    assert main(["evaluate", str(out)]) == 0  # the run's own data by default
    assert "the run's own test split" in capsys.readouterr().out
    results = sorted((out / "evaluations").glob("*.json"))
    assert len(results) == 2  # two evaluations in one second: two files, neither overwritten
    for path in results:
        result = json.loads(path.read_text())
        assert result["split"] == "test" and result["n"] == len(test_keys)


def test_the_run_stores_its_predictions_and_evaluate_reads_them(run):
    """``predictions.npz``: the kept model's val and test probabilities, computed once when a run ends,
    readable without torch; evaluate on the run's own test split reads them (the operating point's)."""
    from thaw.use.evaluate import evaluate_run

    data, out = run
    code = (
        "import sys; from thaw.core.run_folder import RunFiles; "
        f"p = RunFiles({str(out)!r}).read_predictions(); "
        "print(sorted(p), p['test'].probs.shape, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    summary = json.loads((out / "summary.json").read_text())
    test = summary["operating"]["test"]
    assert done.stdout.split() == ["['test',", "'val']", f"({test['n']},", "2)", "False"]
    evaluation = evaluate_run(out, write=False)
    assert (evaluation.metrics.n, evaluation.metrics.accuracy) == (test["n"], test["accuracy"])


def test_evaluate_on_other_data_leaves_out_training_images(run, tmp_path):
    data, out = run
    import shutil

    import thaw

    trained = [r["key"] for r in csv.DictReader((out / "split.csv").open()) if r["split"] == "train"]
    other = tmp_path / "other"
    shutil.copytree(data, other)
    mixed = tmp_path / "mixed.csv"
    rows = [("path", "label")] + [(k, "red" if "/red/" in k else "blue") for k in trained[:4]]
    rows += [(str(p), p.parent.name) for p in sorted((other / "red").glob("*.png"))[:3]]
    mixed.write_text("\n".join(",".join(r) for r in rows) + "\n")
    evaluation = thaw.evaluate_run(out, str(mixed))
    assert evaluation.split == "all" and evaluation.metrics.n == 3
    assert "less 4 image(s) the run trained on" in evaluation.note


def test_rerun_from_config_and_never_overwrite(run, capsys):
    data, out = run
    assert main(["fit", str(data), *TINY, "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    again = out.parent / "again"
    assert (
        main(["fit", "--config", str(out / "config.yaml"), "--out", str(again), "--phase2-epochs", "0"]) == 0
    )
    summary = json.loads((again / "summary.json").read_text())
    assert list(summary["phases"]) == ["phase1"]  # pure feature extraction
    first = list(csv.DictReader((out / "split.csv").open()))
    second = list(csv.DictReader((again / "split.csv").open()))
    assert first == second  # same seed, same split


@pytest.mark.parametrize(
    "args, message",
    [
        (["fit", "/no/such/folder"], "does not exist"),
        (["fit", "builtin:digits", "--unfreeze", "lots"], "--unfreeze"),
        (["fit", "builtin:digits", "--model", "resnet81"], "did you mean"),
        (["predict", "/no/run", "x.png"], "no model file"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    done = run_thaw(args)  # its own process, forked from a preloaded one (tests/zygote.py)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("thaw: error:") and message in lines[0], done.stderr
