"""The named strategies: each is a few plans the one engine runs; every one trains on tiny data."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

import thaw
from thaw.cli import main
from thaw.core.config import override
from thaw.core.errors import ThawError
from thaw.core.results import RunSummary
from thaw.core.strategies import STRATEGIES, plans_for

EXPECTED = {
    "linear-probe": ["phase1"],
    "two-phase": ["phase1", "phase2"],
    "finetune-high-lr": ["finetune"],
    "finetune-low-lr": ["finetune"],
    "discriminative": ["phase1", "phase2"],
    "gradual": ["phase1", "thaw1", "thaw2", "thaw-all"],
    "lp-ft": ["phase1", "phase2"],
    "l2-sp": ["phase1", "phase2"],
    "wise-ft": ["phase1", "phase2", "wise-ft"],
    "surgical-first": ["phase1", "surgical"],
    "surgical-last": ["phase1", "surgical"],
    "bitfit": ["phase1", "phase2"],
    "norm-only": ["phase1", "phase2"],
    "lora": ["phase1", "phase2"],
    "ssf": ["phase1", "phase2"],
}


def test_every_strategy_is_listed_and_has_its_plans():
    assert set(STRATEGIES) == set(EXPECTED)
    for name, phases in EXPECTED.items():
        config = override(thaw.RunConfig(), {"strategy": name, "gradual_groups": 2})
        assert [p.name for p in plans_for(config)] == phases, name


def test_strategy_plans_say_what_they_promise():
    c = override(thaw.RunConfig(), {"lr": 1e-3, "lr_ratio": 10.0, "layer_decay": 0.5, "l2_sp": 0.02})
    plans = {name: plans_for(override(c, {"strategy": name})) for name in STRATEGIES}
    assert plans["linear-probe"][0].features == "cached" and plans["linear-probe"][0].train == "head"
    high, low = plans["finetune-high-lr"][0], plans["finetune-low-lr"][0]
    assert high.train == "all" and high.group_lr(4) == [1e-3] * 4 and high.lr == 1e-3
    assert low.lr == pytest.approx(1e-4) and low.group_lr(4) == pytest.approx([1e-4] * 4)
    assert plans["discriminative"][1].group_lr(3) == pytest.approx([2.5e-5, 5e-5, 1e-4])
    lp_ft = plans["lp-ft"][1]
    assert lp_ft.train == "all" and lp_ft.lr == pytest.approx(1e-4) and lp_ft.lr_ratio == 1.0
    tune = plans["l2-sp"][1]
    assert (tune.regularizer, tune.regularizer_strength, tune.weight_decay) == ("l2-sp", 0.02, 0.0)
    assert plans["wise-ft"][2].interpolate_from == "phase1"
    assert plans["surgical-first"][1].groups(5) == [0] and plans["surgical-last"][1].groups(5) == [4]
    stages = plans["gradual"][1:]
    assert [p.groups(5) for p in stages] == [[4], [3, 4], [2, 3, 4], [0, 1, 2, 3, 4]]
    # the default batch-norm policy trains batch norm from phase 1's features where whole layers train;
    # the recipes that promise which tensors move hold it, unless the user named a policy
    assert {p.bn_policy for p in plans["two-phase"] + stages + [lp_ft]} == {"matched"}
    fewer = ("bitfit", "norm-only", "lora", "ssf")
    assert {plans[name][1].bn_policy for name in fewer} == {"frozen"}
    assert plans_for(override(c, {"strategy": "bitfit", "bn_policy": "tracked"}))[1].bn_policy == "tracked"


def test_phase2_trains_the_solved_head_at_the_backbone_lr_unless_told():
    """Every strategy whose phase 2 starts from phase 1's solved head trains that head at the backbone's LR
    (issue 25: at its own lr, AdamW's first steps flip the images near the boundary); --phase2-head-lr lr
    gives it back its own; phase 1, and the strategies without a solved head, keep the head's lr."""
    c = override(thaw.RunConfig(), {"lr": 2e-3, "lr_ratio": 20.0, "gradual_groups": 2})
    tuned = {"two-phase", "discriminative", "gradual", "l2-sp", "wise-ft", "surgical-first", "surgical-last"}
    tuned |= {"bitfit", "norm-only", "lora", "ssf"}
    for name in STRATEGIES:
        for at, head in (("backbone", 1e-4), ("lr", 2e-3)):
            plans = plans_for(override(c, {"strategy": name, "phase2_head_lr": at}))
            trained = [p for p in plans if not p.interpolate_from]
            assert trained[0].head_lr() == (2e-3 if name != "finetune-low-lr" else pytest.approx(1e-4)), name
            after = [p.head_lr() for p in trained[1:]]
            if name in tuned:
                assert after and after == pytest.approx([head] * len(after)), (name, at)
                assert all(p.backbone_lr() == pytest.approx(1e-4) for p in trained[1:]), name
            elif name == "lp-ft":  # Kumar's recipe: one LR, lr / lr_ratio, whatever the setting
                assert after == pytest.approx([1e-4]), name
    with pytest.raises(ThawError, match="--phase2-head-lr 'fast' is not one of backbone, lr"):
        override(c, {"phase2_head_lr": "fast"}).validate()


def test_unknown_strategy_is_one_clear_error(capsys):
    with pytest.raises(ThawError, match="--strategy 'nope' is not one of linear-probe, two-phase"):
        plans_for(override(thaw.RunConfig(), {"strategy": "nope"}))
    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STRATEGIES) and len(out.strip().splitlines()) == len(STRATEGIES) + 1
    assert "auto" in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_strategy_trains_on_tiny_data(name, class_folder, tmp_path):
    config = tiny_config(class_folder, tmp_path / name, strategy=name, gradual_every=1, gradual_groups=2)
    result = thaw.fit(config, quiet=True)
    summary = RunSummary.read(result.path)
    assert list(summary.phases) == EXPECTED[name]
    assert summary.strategy == name
    # the diagnostics are there for every plan; a head-only plan leaves the backbone exactly as it was
    assert set(summary.forgetting) == set(EXPECTED[name])
    for phase, d in summary.forgetting.items():
        assert d.probe_images == summary.images["val"]
        assert len(d.weight_drift) == len(result.model.layer_groups)
        trained = summary.phases[phase].trainable_groups.split("/")[0] != "0"
        if phase == "phase1" or name == "linear-probe":
            assert d.cka == pytest.approx(1.0) and max(d.weight_drift) == 0.0
        elif trained:
            assert max(d.weight_drift) > 0.0
        assert d.imagenet_agreement is None and "random" in d.imagenet_note  # --weights none
    assert (result.path / "drift.png").stat().st_size > 1000
    assert "forgetting" in json.loads((result.path / "summary.json").read_text())
    # every run folder is complete, a cached solve alone (linear-probe) included: its row in metrics.csv
    # and its report.html (it once had neither)
    rows = (result.path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(len(p.epochs) for p in summary.phases.values())
    assert rows[1].startswith(EXPECTED[name][0])  # the first plan's first row
    assert (result.path / "report.html").stat().st_size > 1000
