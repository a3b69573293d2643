"""thaw compare: one split for every run, phase 1 shared, a table, plots, a verdict, resumable."""

from __future__ import annotations

import json

import pytest
from conftest import make_class_folder, tiny_flags

from thaw.cli import main
from thaw.compare import verdict


def test_verdict_respects_noise():
    same = {"two-phase": {0: 0.80, 1: 0.85, 2: 0.90}, "lp-ft": {0: 0.81, 1: 0.84, 2: 0.91}}
    assert "within noise" in verdict(same, "two-phase")["line"]
    better = {"two-phase": {0: 0.80, 1: 0.85, 2: 0.90}, "lp-ft": {0: 0.85, 1: 0.905, 2: 0.949}}
    v = verdict(better, "two-phase")
    assert v["beyond_noise"] and v["best"] == "lp-ft" and "lp-ft is better beyond noise" in v["line"]
    assert v["mean_difference"] == pytest.approx(0.0513, abs=1e-3)
    worse = {"two-phase": {0: 0.85, 1: 0.905, 2: 0.949}, "lp-ft": {0: 0.80, 1: 0.85, 2: 0.90}}
    assert "two-phase vs lp-ft: +5.1 points" in verdict(worse, "two-phase")["line"]
    one = {"two-phase": {0: 0.8}, "lp-ft": {0: 0.9}}
    assert "no verdict on noise" in verdict(one, "two-phase")["line"]


@pytest.mark.slow
def test_compare_runs_shares_phase1_and_resumes(tmp_path, capsys):
    data = make_class_folder(tmp_path / "shapes", per_class=10)
    out = tmp_path / "cmp"
    argv = [
        "compare",
        str(data),
        "--strategies",
        "two-phase,linear-probe,finetune-low-lr",
        "--seeds",
        "2",
        "--out",
        str(out),
        *tiny_flags(),
        "--phase2-epochs",
        "1",
        "--shift",
        "corruptions",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "6 runs (3 strategies x 2 seeds), 0 already finished" in printed and "minutes" in printed
    for name in ("results.json", "table.md", "table.csv", "val_accuracy.png", "gain.png", "cka_accuracy.png"):
        assert (out / name).stat().st_size > 100, name
    results = json.loads((out / "results.json").read_text())
    assert len(results["runs"]) == 6 and results["verdict"]["line"]
    assert {r["strategy"] for r in results["runs"]} == {"two-phase", "linear-probe", "finetune-low-lr"}
    # one split for every run
    splits = {(out / r["path"] / "split.csv").read_text() for r in results["runs"]}
    assert len(splits) == 1 and splits == {(out / "split.csv").read_text()}
    # phase 1 computed once per seed: linear-probe's features came from two-phase's cache
    for r in results["runs"]:
        phases = r["summary"]["phases"]
        if r["strategy"] == "linear-probe":
            assert phases["phase1"]["solver"]["features_from_cache"] is True
            twin = next(t for t in results["runs"] if t["strategy"] == "two-phase" and t["seed"] == r["seed"])
            assert phases["phase1"]["val"] == twin["summary"]["phases"]["phase1"]["val"]
        assert r["summary"]["shift"]["corrupted_accuracy"] is not None
        assert r["summary"]["forgetting"]
    table = (out / "table.md").read_text()
    assert "| two-phase | 2 |" in table and "+-" in table and "corrupted acc" in table

    # the same command again: every run is skipped, the results are the same
    mtimes = {p: p.stat().st_mtime for p in (out / "runs").glob("*/model.safetensors")}
    assert main(argv) == 0
    assert "[1/6]" not in capsys.readouterr().out
    assert mtimes == {p: p.stat().st_mtime for p in (out / "runs").glob("*/model.safetensors")}
    # a different command in the same folder is refused, and nothing there changes
    assert main([*argv[:3], "two-phase", *argv[4:]]) == 2
    assert "different command" in capsys.readouterr().err


def test_compare_finishes_an_interrupted_run(tmp_path, capsys):
    data = make_class_folder(tmp_path / "shapes", per_class=8)
    out = tmp_path / "cmp"
    argv = [
        "compare",
        str(data),
        "--strategies",
        "two-phase,linear-probe",
        "--seeds",
        "1",
        "--out",
        str(out),
        *tiny_flags(),
        "--phase2-epochs",
        "1",
    ]
    assert main(argv) == 0
    run = out / "runs" / "two-phase-seed0"
    run.rename(run.with_name(run.name + ".incomplete"))  # as if killed before its folder was committed
    (run.with_name(run.name + ".incomplete") / "summary.json").unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "[1/2] two-phase, seed 0" in capsys.readouterr().out
    assert (run / "summary.json").is_file()


def test_compare_rejects_bad_input(tmp_path, capsys):
    data = make_class_folder(tmp_path / "shapes")
    assert main(["compare", str(data), "--strategies", "two-phase,nope", "--out", str(tmp_path / "c")]) == 2
    assert "unknown nope" in capsys.readouterr().err
    assert main(["compare", str(data), "--seeds", "0", "--out", str(tmp_path / "c")]) == 2
    assert main(["compare", str(data), "--strategy", "gradual", "--out", str(tmp_path / "c")]) == 2
    assert "not --strategy" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("mine")
    assert main(["compare", str(data), "--out", str(other), *tiny_flags()]) == 2
    assert "not a comparison folder" in capsys.readouterr().err
