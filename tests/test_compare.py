"""thaw compare: one split for every run, phase 1 shared, a table, plots, a verdict, resumable."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from conftest import make_class_folder, tiny_flags

from thaw.cli import main
from thaw.metrics.stats import holm
from thaw.studies.compare import pairwise_csv, pairwise_rows, verdict


def test_verdict_respects_noise():
    same = {"two-phase": {0: 0.80, 1: 0.85, 2: 0.90}, "lp-ft": {0: 0.81, 1: 0.84, 2: 0.91}}
    v = verdict(same, "two-phase")
    assert "within seed noise" in v["line"] and not v["beyond_noise"]
    one = {"two-phase": {0: 0.8}, "lp-ft": {0: 0.9}}
    assert "no verdict on noise" in verdict(one, "two-phase")["line"]


def test_a_real_difference_is_called_with_its_interval_and_corrected_p():
    better = {
        "two-phase": {0: 0.80, 1: 0.85, 2: 0.90, 3: 0.82, 4: 0.88, 5: 0.86},
        "lp-ft": {0: 0.85, 1: 0.87, 2: 0.97, 3: 0.83, 4: 0.94, 5: 0.90},  # +5, +2, +7, +1, +6, +4
        "linear-probe": {0: 0.79, 1: 0.86, 2: 0.89, 3: 0.83, 4: 0.87, 5: 0.86},
    }
    v = verdict(better, "two-phase", images=270)
    assert v["best"] == "lp-ft" and v["versus"] == "two-phase" and v["beyond_noise"]
    main = v["main"]
    assert main["mean"] == pytest.approx(0.0417, abs=1e-4) and main["test"] == "paired t"
    lo, hi = main["ci"]
    assert 0 < lo < main["mean"] < hi
    # the family: both vs the reference, and linear-probe vs the best; Holm over all three
    assert [(c["a"], c["b"]) for c in v["comparisons"]] == [
        ("lp-ft", "two-phase"),
        ("linear-probe", "two-phase"),
        ("linear-probe", "lp-ft"),
    ]
    assert main["p_holm"] > main["p_t"] and main["p_holm"] < 0.05
    assert main["p_sign_flip"] == pytest.approx(2 / 2**6)  # every seed gained: the floor on 6 seeds
    line = v["line"]
    assert line.startswith("lp-ft vs two-phase: +4.2 points of test accuracy [95% CI +")
    assert f"Holm-corrected over 3 comparisons p = {main['p_holm']:.3f}" in line
    assert "lp-ft is better beyond seed noise (sign-flip p = 0.031)" in line
    assert "seed-to-seed training noise on one fixed split" in v["noise"] and "270 test images" in v["noise"]
    # the reference best: the reference against the runner-up, signs turned
    worse = {"two-phase": better["lp-ft"], "lp-ft": better["two-phase"]}
    assert verdict(worse, "two-phase")["line"].startswith("two-phase vs lp-ft: +4.2 points")
    # on 3 seeds a t-test can call it, the sign-flip test cannot: the line says the verdict rests on normality
    three = {"two-phase": {0: 0.80, 1: 0.85, 2: 0.90}, "lp-ft": {0: 0.85, 1: 0.905, 2: 0.949}}
    line = verdict(three, "two-phase")["line"]
    assert "if seed differences are normal" in line and "cannot go below 0.250 on 3 seeds" in line


def test_a_constant_difference_is_not_p_zero():
    constant = {"two-phase": {0: 0.80, 1: 0.85, 2: 0.90}, "lp-ft": {0: 0.82, 1: 0.87, 2: 0.92}}
    v = verdict(constant, "two-phase")
    main = v["main"]
    assert main["test"] == "sign-flip" and main["sd"] == 0.0
    assert main["p"] == main["p_holm"] == pytest.approx(0.25) and not v["beyond_noise"]
    assert math.isnan(main["p_t"]) and all(math.isnan(x) for x in main["ci"])
    assert "p >= 0.25: 3 seeds cannot show more" in v["line"] and "not shown beyond seed noise" in v["line"]
    identical = {"two-phase": {0: 0.8, 1: 0.9}, "linear-probe": {0: 0.8, 1: 0.9}}
    same = verdict(identical, "two-phase")
    assert same["main"]["p"] == 1.0 and not same["beyond_noise"]
    assert (
        same["line"]
        == "two-phase vs linear-probe: the same test accuracy on every one of 2 seeds: no difference to call"
    )
    rows = pairwise_rows(v["comparisons"])
    assert rows[0][2] == "+2.0 on every seed (no interval)" and rows[0][5] == "0.250 (= floor)"


def test_holm_against_a_hand_computed_example():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> made non-decreasing
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = holm([math.nan, 0.02, 0.5])  # no test (NaN) is no member of the family
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.04, 0.5])
    family = {
        "two-phase": {0: 0.80, 1: 0.85, 2: 0.90, 3: 0.86},
        "a": {0: 0.83, 1: 0.86, 2: 0.94, 3: 0.88},
        "b": {0: 0.79, 1: 0.85, 2: 0.92, 3: 0.85},
    }
    comparisons = verdict(family, "two-phase")["comparisons"]
    assert [c["p_holm"] for c in comparisons] == pytest.approx(holm([c["p_t"] for c in comparisons]))


def test_pairwise_csv_parses(tmp_path):
    scores = {"two-phase": {0: 0.80, 1: 0.85, 2: 0.90}, "lp-ft": {0: 0.82, 1: 0.88, 2: 0.91}}
    rows = list(csv.DictReader(io.StringIO(pairwise_csv(verdict(scores, "two-phase")["comparisons"]))))
    assert len(rows) == 1 and rows[0]["a"] == "lp-ft" and float(rows[0]["mean"]) == pytest.approx(0.02)
    assert float(rows[0]["ci_low"]) < 0.02 < float(rows[0]["ci_high"]) and rows[0]["test"] == "paired t"


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
    assert "| linear-probe vs two-phase | 2 |" in table and "Holm's correction over the" in table
    assert "seed-to-seed training noise" in table and len(results["verdict"]["comparisons"]) >= 2
    assert (out / "pairwise.csv").read_text().startswith("a,b,n,mean")

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
    planned = tmp_path / "plans.yaml"  # a config with plans: would run the same plans for every strategy
    planned.write_text("plans:\n  - name: probe\n    kind: solve\n    train: head\n")
    assert main(["compare", str(data), "--config", str(planned), "--out", str(tmp_path / "p")]) == 2
    assert "drop plans:" in capsys.readouterr().err and not (tmp_path / "p").exists()
