"""Strategy as data: ``thaw fit --plans FILE`` (and ``plans:`` in a config) runs the plans it lists; a bad
file is one line and no run folder; the engine runs each plan by the step its kind names, and refuses a
kind it has no step for."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml
from conftest import tiny_flags

from thaw.cli import main
from thaw.core.config import RunConfig
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan, for_role, plans_for, read_plans
from thaw.train import engine

PLANS = [
    {"name": "head", "train": "head", "features": "online", "epochs": 1, "lr": 0.003},
    {"name": "top", "train": "last:1", "epochs": 1, "lr": 0.001, "lr_ratio": 4},
]


def test_plans_file_runs_the_plans_it_lists(tmp_path, class_folder):
    plans = tmp_path / "plans.yaml"
    plans.write_text(yaml.safe_dump(PLANS))
    out = tmp_path / "run"
    argv = ["fit", str(class_folder), *tiny_flags(), "--plans", str(plans), "--out", str(out), "--quiet"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["phases"]) == ["head", "top"] and summary["strategy"] == "plans"
    assert summary["phases"]["top"]["head_lr"] == 0.001
    assert summary["phases"]["top"]["backbone_lr"] == pytest.approx(0.001 / 4)
    recorded = RunConfig.from_yaml(out / "config.yaml")  # the run's config reruns the same plans
    assert recorded.plans == PLANS and [p.name for p in plans_for(recorded)] == ["head", "top"]
    assert [p["name"] for p in yaml.safe_load((out / "plans.yaml").read_text())] == ["head", "top"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: phase1\n", "must be a list of plans"),
        ("- {name: a, train: sideways}\n", "train='sideways' must be head, all"),
        ("- {name: a, lr: fast}\n", "lr = 'fast' must be a number"),
        ("- {train: head}\n", "each plan needs a name"),
        ("- {name: a, speed: 3}\n", "unknown setting(s) speed"),
        ("- {name: a}\n- {name: a}\n", "names must be unique"),
        ("- [unclosed\n", "is not valid YAML"),
    ],
)
def test_a_bad_plans_file_is_one_line_and_no_run_folder(tmp_path, class_folder, capsys, text, message):
    plans = tmp_path / "plans.yaml"
    plans.write_text(text)
    out = tmp_path / "run"
    assert main(["fit", str(class_folder), *tiny_flags(), "--plans", str(plans), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("thaw: error: ") and message in err and "\n" not in err, err
    assert f"--plans {plans}" in err or message == "is not valid YAML"
    assert not out.exists() and not out.with_name("run.incomplete").exists()


def test_plans_in_a_config_are_checked_before_a_run_folder(tmp_path, class_folder, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"plans": [{"name": "a", "epochs": 0}]}))
    out = tmp_path / "run"
    assert main(["fit", str(class_folder), *tiny_flags(), "--config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "plans: plan 'a': epochs must be at least 1" in err and "\n" not in err
    assert not out.exists()
    with pytest.raises(ThawError, match="plans given as data carry their own LRs"):
        RunConfig(plans=PLANS, lr="auto").validate()
    assert read_plans(str(_write(tmp_path / "p.yaml", PLANS))) == PLANS
    with pytest.raises(ThawError, match="no such file"):
        read_plans(str(tmp_path / "missing.yaml"))


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_plan_kind_has_a_step_and_an_unknown_kind_is_refused():
    kinds = {
        PhasePlan("a", features="cached").kind: engine.cached_head,
        PhasePlan("b", train="last:2", features="cached").kind: engine.cached_prefix,
        PhasePlan("c", train="all").kind: engine.run_phase,
        PhasePlan("d", interpolate_from="a").kind: engine.interpolate,
    }
    assert set(kinds) == set(engine.STEPS) == {"solve", "prefix", "online", "interpolate"}
    assert all(engine.step(kind) is run for kind, run in kinds.items())
    with pytest.raises(ThawError, match="unknown step kind 'distill'"):
        engine.step("distill")


def test_the_finder_and_pseudo_labels_take_plans_by_role():
    config = RunConfig(lr=0.002, lr_ratio=5.0, strategy="wise-ft")
    plans = plans_for(config)
    assert for_role("head", config, plans) == (0, plans[0])
    assert for_role("backbone", config, plans) == (1, plans[1])
    index, pseudo = for_role("pseudo", config, plans)
    assert index == len(plans) and pseudo.name == "pseudo" and pseudo.features == "online"
    assert (pseudo.lr, pseudo.backbone_lr(), pseudo.train) == (0.002, 0.002 / 5.0, plans[1].train)
    given = [plans[0], dataclasses.replace(plans[1], lr=0.005, name="tune")]  # as data: the round follows
    assert for_role("pseudo", config, given)[1].lr == 0.005
    probe_only = RunConfig(strategy="linear-probe")
    assert for_role("backbone", probe_only, plans_for(probe_only)) is None
    no_head = RunConfig(strategy="finetune-high-lr")  # no phase 1: a fresh head's plan all the same
    index, head = for_role("head", no_head, plans_for(no_head))
    assert index == 0 and head.train == "head"
