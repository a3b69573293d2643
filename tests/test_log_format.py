"""--log-format json: one JSON object per event on stdout, nothing else there, and the epoch events are the
rows metrics.csv and summary.json keep."""

from __future__ import annotations

import csv
import json
import os
from datetime import datetime
from pathlib import Path

import pytest
from conftest import make_class_folder, tiny_flags
from zygote import run_thaw

from thaw import cli
from thaw.core import run_log as report

SRC = Path(__file__).resolve().parents[1] / "src"


def test_a_real_fit_in_json_writes_only_events(tmp_path):
    data = make_class_folder(tmp_path / "shapes", per_class=8)
    out = tmp_path / "run"
    argv = [
        "fit",
        str(data),
        *tiny_flags(),
        "--phase2-epochs",
        "2",
        "--out",
        str(out),
        "--log-format",
        "json",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    done = run_thaw(argv, env=env)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]  # every line parses, or this fails
    assert events and all(line.startswith("{") for line in done.stdout.splitlines())
    for e in events:
        assert isinstance(e["event"], str) and datetime.fromisoformat(e["time"]).tzinfo is not None
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "result"
    assert {"phase_start", "epoch", "phase_end", "augment_check", "gate"} <= set(kinds)
    start = events[0]
    assert (
        len(start["config_digest"]) == 64
        and start["out"] == str(out)
        and start["plans"] == ["phase1", "phase2"]
    )

    epochs = [
        {k: v for k, v in e.items() if k not in ("event", "time")} for e in events if e["event"] == "epoch"
    ]
    summary = json.loads((out / "summary.json").read_text())
    kept = [row for phase in summary["phases"].values() for row in phase["epochs"]]
    assert epochs == kept and [e["phase"] for e in epochs].count("phase2") == 2
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(epochs)
    for row, event in zip(rows, epochs, strict=True):
        for key, text in row.items():
            if text == "":
                assert event.get(key) is None
            elif key == "phase":
                assert event[key] == text
            else:
                assert event[key] == pytest.approx(float(text), rel=1e-6), key
    result = events[-1]
    assert result["final_phase"] == summary["final_phase"]
    assert [p["phase"] for p in result["phases"]] == list(summary["phases"])
    assert result["phases"][-1]["test"]["accuracy"] == summary["phases"]["phase2"]["test"]["accuracy"]


def test_text_stays_the_default_and_the_choices_agree():
    p = cli.parser(only="fit")
    fit = p._subparsers._group_actions[0].choices["fit"]
    assert tuple(next(a for a in fit._actions if a.dest == "log_format").choices) == report.LOG_FORMATS
    assert p.parse_args(["fit", "x"]).log_format == "text"
    assert report.Reporter().json is False
    with report.log_format("json"):
        r = report.Reporter()
        assert r.json and r.quiet  # quiet for the caller: no progress bar
    assert report.Reporter().json is False
    with pytest.raises(ValueError, match="choose from text, json"):
        with report.log_format("xml"):
            pass


def test_a_warning_and_nan_are_json(capsys):
    with report.log_format("json"):
        r = report.Reporter(quiet=True)
        r.say("not shown: quiet")
        r.warn("look")
        r.epoch({"phase": "p", "val_loss": float("nan")})  # quiet: no epoch events
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(x)["event"] for x in lines] == ["warning"]
    with report.log_format("json"):
        report.Reporter().epoch({"phase": "p", "val_loss": float("nan")})
    assert json.loads(capsys.readouterr().out)["val_loss"] is None
