"""thaw lr-find (the LR range test) and --lr auto: the sweep restores the model and the RNG, the rules
suggest a swept LR, the plot is written, bad input is one line, and a --lr auto run records its choice."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_config, tiny_flags

import thaw
from thaw.cli import main
from thaw.core.config import ModelConfig, RunConfig
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier
from thaw.train.lr_find import (
    Sweep,
    _check_curve,
    restored,
    suggest,
    sweep,
    sweep_lrs,
    sweep_steps,
    valley,
)

TINY = ModelConfig(name="mobilenet_v3_small", weights="none")


def batches(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 2, (n,), generator=g)


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


@pytest.mark.parametrize("train, swept", [("head", "head"), ("all", "backbone")])
def test_sweep_restores_model_and_rng(train, swept):
    torch.manual_seed(0)
    model = build_classifier(TINY, 2, image_size=32)
    model.eval()
    weights, grads, modes = snapshot(model)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    plan = PhasePlan("p", train=train, lr=1e-3, lr_ratio=10, bn_policy="train")
    result = sweep(model, plan, batches(), sweep_lrs(1e-4, 1.0, 25), swept)
    assert 1 < len(result.lrs) <= 25 and len(result.raw_losses) == len(result.lrs)
    assert len(set(result.raw_losses)) > 1  # it trained
    after_weights, after_grads, after_modes = snapshot(model)
    assert after_weights.keys() == weights.keys()
    assert all(torch.equal(weights[k], after_weights[k]) for k in weights)  # BN buffers included
    assert after_grads == grads and after_modes == modes
    assert all(p.grad is None for p in model.parameters())
    # the global RNGs continue exactly as if no sweep had run
    assert random.random() == random.Random(1).random()
    state = np.random.get_state()
    np.random.seed(1)
    assert np.array_equal(state[1], np.random.get_state()[1])
    drawn = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(drawn, torch.rand(3))


def test_restored_undoes_changes():
    model = build_classifier(TINY, 2, image_size=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with restored(model):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model.head.requires_grad_(False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.head.parameters())


def test_backbone_sweep_keeps_head_lr(monkeypatch):
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append({g["name"]: g["lr"] for g in self.param_groups})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    model = build_classifier(TINY, 2, image_size=32)
    plan = PhasePlan("p", train="last:2", lr=3e-3, lr_ratio=10)
    lrs = sweep_lrs(1e-6, 1e-2, 20)
    sweep(model, plan, batches(), lrs, "backbone")
    assert {round(s["head"], 12) for s in seen} == {3e-3}
    swept = [max(v for k, v in s.items() if not k.startswith("head")) for s in seen]
    assert swept == pytest.approx(lrs[: len(seen)])


def test_sweep_weighs_the_loss_by_class_as_balance_loss_trains():
    """--balance loss: the sweep's loss is the class-weighted cross entropy that training uses."""
    model = build_classifier(TINY, 2, image_size=32)
    for m in model.modules():  # dropout off: the sweep's first logits are then the ones computed here
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    with torch.no_grad():  # the new head starts at zero, where every weighting gives ln 2
        model.head[-1].bias.copy_(torch.tensor([1.0, -1.0]))
    model.eval()
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 0, 0, 0, 1, 1])
    weight = torch.tensor([0.25, 4.0])
    with torch.no_grad():
        logits = model(x)  # the first step's loss is computed before any update
    expected = {
        "plain": torch.nn.functional.cross_entropy(logits, y).item(),
        "weighted": torch.nn.functional.cross_entropy(logits, y, weight=weight).item(),
    }
    assert abs(expected["plain"] - expected["weighted"]) > 1e-3  # the check can tell them apart
    plan = PhasePlan("p", train="head", lr=1e-3, lr_ratio=10, bn_policy="frozen")
    plain = sweep(model, plan, iter([(x, y)] * 3), sweep_lrs(1e-6, 1e-5, 3), "head")
    weighted = sweep(model, plan, iter([(x, y)] * 3), sweep_lrs(1e-6, 1e-5, 3), "head", class_weight=weight)
    assert plain.raw_losses[0] == pytest.approx(expected["plain"], rel=1e-5)
    assert weighted.raw_losses[0] == pytest.approx(expected["weighted"], rel=1e-5)


def test_valley_and_rules_on_a_known_curve():
    lrs = sweep_lrs(1e-7, 1.0, 100)
    # flat, a long fall between 1e-4 and 1e-2, then a steep rise
    x = np.log10(lrs)
    losses = list(0.7 - 0.4 / (1 + np.exp(-3 * (x + 3))) + np.where(x > -1.5, (x + 1.5) ** 2, 0))
    rules = suggest(lrs, losses, 100)
    assert set(rules) == {"valley", "steep", "minimum/10"}
    assert all(lrs[0] <= v <= lrs[-1] for v in rules.values())
    assert 1e-5 < rules["valley"] < 1e-2  # inside the fall, well below the minimum
    assert rules["steep"] == pytest.approx(1e-3, rel=0.5)
    assert 25 <= valley([*range(60, 0, -1), 5, 10, 20]) <= 35  # about halfway down the longest descent


def test_sweep_steps_and_too_small_data():
    assert sweep_steps(546, 32) == 100
    assert sweep_steps(244, 32) == 80  # 8 batches, at most 10 passes
    with pytest.raises(ThawError, match="too small"):
        sweep_steps(17, 16)  # one batch (and a last one of 1 image, dropped)
    with pytest.raises(ThawError, match="--steps 80 or fewer"):
        sweep_steps(244, 32, 100)
    with pytest.raises(ThawError, match="at least 20"):
        sweep_steps(546, 32, 5)


def test_a_curve_diverging_at_once_is_one_error():
    lrs = sweep_lrs(1.0, 10.0, 100)[:12]
    rising = [0.7 + 0.1 * i for i in range(12)]
    with pytest.raises(ThawError, match="diverged from the first steps.*--start-lr"):
        _check_curve(Sweep(lrs, rising, rising, True), 100, 1.0, "backbone")
    with pytest.raises(ThawError, match="not finite"):
        _check_curve(Sweep(lrs[:1], [math.nan], [math.nan], True), 100, 1.0, "head")
    # a phase-2 curve from a solved head may only rise, then diverge: a finding, not an error
    lrs = sweep_lrs(1e-7, 1.0, 100)[:95]
    rising = [0.4 + 0.02 * i for i in range(95)]
    _check_curve(Sweep(lrs, rising, rising, True), 100, 1e-7, "backbone")
    with pytest.raises(ThawError, match="head's loss never fell"):
        _check_curve(Sweep(lrs, rising, rising, True), 100, 1e-7, "head")


def test_lr_find_cli_both_phases(tmp_path, class_folder, capsys):
    # real ImageNet weights: phase 2 starts from a head solved on the features, and on a random backbone's
    # wild features that head moves the loss into the thousands at the first step (a true divergence)
    from thaw.weights.install import is_installed

    if not is_installed("mobilenet_v2"):
        pytest.skip("needs `thaw weights install mobilenet_v2` (make test installs it)")
    out = tmp_path / "finder"
    real = ["--model", "mobilenet_v2", "--weights", "IMAGENET1K_V1", "--image-size", "32"]
    real += ["--batch-size", "4"]
    argv = ["lr-find", str(class_folder), *real, "--out", str(out)]
    assert main([*argv, "--phase", "2", "--lr", "auto", "--steps", "30", "--end-lr", "0.01"]) == 0
    printed = capsys.readouterr().out
    assert "rule: valley" in printed and "suggested lr_ratio" in printed
    first = json.loads((out / "lr_find_phase1.json").read_text())
    second = json.loads((out / "lr_find_phase2.json").read_text())
    for found in (first, second):
        assert (out / found["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert found["start_lr"] <= found["suggestion"] <= found["end_lr"]
        assert found["suggestion"] in found["lrs"] and found["rule"] == "valley"
    assert second["head_lr"] == first["suggestion"]  # --lr auto: the head fixed at phase 1's suggestion
    assert second["lr_ratio"] == pytest.approx(max(1.0, second["head_lr"] / second["suggestion"]))
    # never overwrites: the same --out again is one line, exit 2
    assert main([*argv, "--steps", "20"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_lr_find_bad_input_is_one_line(tmp_path, class_folder, capsys, monkeypatch):
    argv = ["lr-find", str(class_folder), *tiny_flags(batch=16), "--out", str(tmp_path / "f")]
    assert main(argv) == 2  # one batch of the ~11 training images
    err = capsys.readouterr().err.strip()
    assert err.startswith("thaw: error: the training split") and "too small" in err and "\n" not in err
    argv = ["lr-find", str(class_folder), *tiny_flags(batch=4), "--out", str(tmp_path / "g")]

    def diverging(model, plan, batches, lrs, swept="head", seed=0, class_weight=None):  # explodes at once
        return Sweep(lrs[:3], [0.7, 2.0, 9.0], [0.7, 3.3, 30.0], diverged=True)

    monkeypatch.setattr("thaw.train.lr_find.sweep", diverging)
    assert main([*argv, "--steps", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert "diverged from the first steps" in err and "\n" not in err
    assert not (tmp_path / "g" / "lr_find_phase1.png").exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--lr", "auto", "--phase2-epochs", "0"], "--lr auto: no phase of this run trains with an LR"),
        (["--lr-ratio", "auto", "--phase2-epochs", "0"], "--lr-ratio auto: no phase of this run unfreezes"),
    ],
)
def test_auto_for_a_phase_without_lr(tmp_path, class_folder, capsys, flags, message):
    assert main(["fit", str(class_folder), *tiny_flags(), "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes"]


def test_config_lr_auto_or_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: auto\nlr_ratio: 1e2\n")  # YAML reads 1e2 as a string
    config = RunConfig.from_yaml(path).validate()
    assert config.lr == "auto" and config.lr_ratio == 100.0 and config.auto == ("lr",)
    assert config.resolved().lr == 1e-3  # before the finder ran: the default stands in, to check the plans
    assert config.resolved({"lr": 0.02}).lr == 0.02
    with pytest.raises(ThawError, match="lr is auto and has not been found"):
        config.resolved({"lr_ratio": 3.0})
    path.write_text("lr: fast\n")
    with pytest.raises(ThawError, match="lr = 'fast' must be a number or auto"):
        RunConfig.from_yaml(path)
    with pytest.raises(SystemExit):
        main(["fit", "x", "--lr", "fast"])
    with pytest.raises(ThawError, match="--lr 2.0 must be in"):
        RunConfig(lr=2.0).validate()


def test_fit_lr_auto_records_the_value(tmp_path, class_folder):
    config = tiny_config(class_folder, tmp_path / "run", **{"lr": "auto", "data.batch_size": 4})
    result = thaw.fit(config, quiet=True)
    found = result.summary.lr_find["phase1"]
    assert found["rule"] == "valley" and found["start_lr"] <= found["suggestion"] <= found["end_lr"]
    recorded = yaml.safe_load((result.path / "config.yaml").read_text())
    assert recorded["lr"] == found["suggestion"]  # the resolved config; lr_find.json says it was found
    assert json.loads((result.path / "lr_find.json").read_text()) == result.summary.lr_find
    plans = yaml.safe_load((result.path / "plans.yaml").read_text())
    assert all(p["lr"] == found["suggestion"] for p in plans)
    phase2 = result.summary.phases["phase2"]  # the solved head at the backbone's LR (--phase2-head-lr)
    assert phase2.head_lr == pytest.approx(found["suggestion"] / plans[1]["lr_ratio"]) == phase2.backbone_lr
    assert (result.path / "lr_find_phase1.png").is_file()
    assert json.loads((result.path / "summary.json").read_text())["lr_find"]["phase1"]["rule"] == "valley"
    # the recorded config reruns the run as it was: the LR found, not found afresh
    assert RunConfig.from_yaml(result.path / "config.yaml").validate().auto == ()


def test_lr_auto_run_and_its_resume_hand_the_engine_the_same_settings(tmp_path, class_folder, monkeypatch):
    """``thaw fit`` resolves ``--lr auto`` once and records it; ``thaw resume`` reads back the same
    :class:`Resolved`: the same config digest, plans and finder records."""
    from thaw.core.run_log import config_digest
    from thaw.use import run as use_run

    handed = []

    def interrupted(run, resolved, sources, report):  # the engine, stopped before its first plan
        handed.append(resolved)
        raise RuntimeError("interrupted")

    monkeypatch.setattr(use_run, "train", interrupted)
    config = tiny_config(class_folder, tmp_path / "run", **{"lr": "auto", "data.batch_size": 4})
    with pytest.raises(RuntimeError, match="interrupted"):
        thaw.fit(config, quiet=True)
    with pytest.raises(RuntimeError, match="interrupted"):
        thaw.resume(tmp_path / "run.incomplete", quiet=True)
    fitted, resumed = handed
    assert fitted.config.lr == fitted.lr_find["phase1"]["suggestion"] and fitted.config.auto == ()
    assert config_digest(fitted.config) == config_digest(resumed.config)
    assert fitted.plans == resumed.plans and fitted.lr_find == resumed.lr_find
    assert all(p.lr == fitted.config.lr for p in resumed.plans)


def test_head_sweep_without_a_phase_1(tmp_path, class_folder):
    """Fine-tuning from the start (--phase1-epochs 0) still has a head LR to find: a fresh head."""
    from thaw.train.lr_find import lr_find
    from thaw.use.reporting.figures import lr_find_plot

    config = tiny_config(class_folder, tmp_path / "unused", **{"phase1.epochs": 0, "data.batch_size": 4})
    found = lr_find(config, 1, tmp_path / "f", steps=20, say=lambda _: None, draw=lr_find_plot)
    assert found.swept == "head" and found.start_lr <= found.suggestion <= found.end_lr
    assert (tmp_path / "f" / "lr_find_phase1.png").is_file()


def test_check_auto_knows_which_phases_use_an_lr():
    from thaw.train.lr_find import check_auto

    auto = RunConfig(lr="auto", lr_ratio="auto")
    solved = PhasePlan("phase1", features="cached")
    prefix = PhasePlan("phase2", train="last:2", features="cached")  # a cached prefix still trains by LR
    check_auto(auto, [solved, prefix])
    with pytest.raises(ThawError, match="--lr auto: no phase"):
        check_auto(auto, [solved])
    with pytest.raises(ThawError, match="--lr-ratio auto: no phase"):
        check_auto(RunConfig(lr_ratio="auto"), [PhasePlan("phase1")])
