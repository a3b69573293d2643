import csv

import lightning as L
import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file

import thaw
from thaw.core.config import ModelConfig
from thaw.core.results import Metrics, PhaseResult, RunSummary, choose_final, gains
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier

tiny = tiny_config


def losses(run):
    return [
        (r["phase"], r["train_loss"], r["val_loss"]) for r in csv.DictReader((run / "metrics.csv").open())
    ]


def test_same_seed_same_run_on_cpu_and_seed_leaves_the_split(class_folder, tmp_path):
    a = thaw.fit(tiny(class_folder, tmp_path / "a", lr=0.05), quiet=True)
    b = thaw.fit(tiny(class_folder, tmp_path / "b", lr=0.05), quiet=True)
    assert losses(a.path) == losses(b.path)
    c = thaw.fit(tiny(class_folder, tmp_path / "c", lr=0.05, seed=1), quiet=True)
    assert losses(a.path) != losses(c.path)
    assert (a.path / "split.csv").read_text() == (c.path / "split.csv").read_text()  # split_seed, not seed
    d = thaw.fit(tiny(class_folder, tmp_path / "d", **{"data.split_seed": 1}), quiet=True)
    assert (a.path / "split.csv").read_text() != (d.path / "split.csv").read_text()


def test_fine_tune_from_the_start(class_folder, tmp_path):
    result = thaw.fit(tiny(class_folder, tmp_path / "ft", **{"phase1.epochs": 0}), quiet=True)
    assert list(result.summary.phases) == ["phase2"] and result.summary.final_phase == "phase2"
    assert result.summary.gain == {}


def test_unfreeze_last_n_groups(class_folder, tmp_path):
    result = thaw.fit(tiny(class_folder, tmp_path / "n", unfreeze="2"), quiet=True)
    assert result.summary.phases["phase2"].trainable_groups == f"2/{len(result.model.layer_groups)}"


def phase(name, accuracy):
    metrics = Metrics(10, accuracy, accuracy, accuracy, accuracy + 0.05, 0.5, [[5, 0], [0, 5]])
    return PhaseResult(name, 1, 1, False, 1.0, 10.0, 1e-3, 0.0, [], "0/3", 10, metrics, None)


def test_final_phase_keeps_the_best_validation_accuracy_later_on_ties():
    p1, worse, same = phase("phase1", 0.9), phase("phase2", 0.8), phase("phase2", 0.9)
    assert choose_final({"phase1": p1, "phase2": worse}) == "phase1"
    assert choose_final({"phase1": p1, "phase2": same}) == "phase2"
    third = phase("phase3", 0.85)
    assert choose_final({"phase1": p1, "phase2": worse, "phase3": third}) == "phase1"
    g = gains({"phase1": p1, "phase2": worse, "phase3": third})
    assert g["phase2"]["val"]["accuracy"] == pytest.approx(-0.1)
    assert g["phase3"]["val"]["accuracy"] == pytest.approx(0.05) and "test" not in g["phase3"]


def test_three_plan_strategy_runs_end_to_end(class_folder, tmp_path):
    """Head first, then the last 2 layer groups, then all of them with layer-wise LR decay."""
    plans = [
        PhasePlan("head", train="head", lr=1e-2, epochs=2),
        PhasePlan("top2", train="last:2", lr=1e-3, lr_ratio=10, epochs=1),
        PhasePlan("all", train="all", lr=1e-3, lr_ratio=10, layer_decay=0.5, epochs=1),
    ]
    result = thaw.fit(tiny(class_folder, tmp_path / "three"), quiet=True, plans=plans)
    s = result.summary
    n = len(result.model.layer_groups)
    assert list(s.phases) == ["head", "top2", "all"] and set(s.gain) == {"top2", "all"}
    assert [s.phases[p].trainable_groups for p in s.phases] == [f"0/{n}", f"2/{n}", f"{n}/{n}"]
    lrs = s.phases["all"].group_lrs
    assert (
        lrs[-1] == pytest.approx(1e-4)
        and lrs[-2] == pytest.approx(5e-5)
        and lrs[0] == pytest.approx(1e-4 / 2 ** (n - 1))
    )
    rows = list(csv.DictReader((result.path / "metrics.csv").open()))
    assert [r["phase"] for r in rows] == ["head", "head", "top2", "all"]
    assert RunSummary.read(result.path) == s  # summary.json reads back into the same typed summary
    # every plan's best weights are on disk, and the saved model is the chosen plan's
    saved = load_file(str(result.path / "model.safetensors"))
    chosen = load_file(str(result.path / "checkpoints" / f"{s.final_phase}.safetensors"))
    assert all(torch.equal(saved[k], chosen[k]) for k in chosen)


def test_l2_sp_penalises_the_distance_from_the_pretrained_weights():
    from thaw.train.module import PhaseModule

    L.seed_everything(0, verbose=False)
    model = build_classifier(ModelConfig("mobilenet_v3_small", "none"), 2, image_size=32)
    anchor = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    plan = PhasePlan("ft", "last:1", regularizer="l2-sp", regularizer_strength=0.5)
    module = PhaseModule(model, plan, anchor=anchor)
    assert float(module.regularizer().detach()) == 0.0
    top = [n for n in model.layer_groups[-1] if n.endswith("weight")][0]
    bottom = model.layer_groups[0][0]
    params = dict(model.backbone.named_parameters())
    with torch.no_grad():
        params[top].add_(1.0)
        params[bottom].add_(1.0)  # a frozen group: not trained, so not penalised
    reg = module.regularizer()
    assert float(reg.detach()) == pytest.approx(0.5 * params[top].numel())
    reg.backward()
    assert torch.allclose(params[top].grad, torch.full_like(params[top], 2 * 0.5))  # pulls back toward w0
    assert params[bottom].grad is None


def test_version_1_summary_reads_back():
    old = {
        "dataset": "d",
        "model": "m",
        "classes": ["a", "b"],
        "images": {"train": 4, "val": 2},
        "phase1": {**phase("x", 0.5).to_dict(), "val": {**phase("x", 0.5).val.to_dict(), "auc": None}},
        "phase2": phase("x", 0.75).to_dict(),
        "final_phase": "phase2",
        "gain": {"val": {"accuracy": 0.25}},
    }
    for p in ("phase1", "phase2"):
        old[p].pop("name")
    summary = RunSummary.from_dict(old)
    assert list(summary.phases) == ["phase1", "phase2"] and summary.version == 1
    assert summary.phases["phase1"].val.auc != summary.phases["phase1"].val.auc  # null reads back as NaN
    assert summary.final.val.accuracy == 0.75 and summary.gain == {"phase2": {"val": {"accuracy": 0.25}}}


def test_failed_run_leaves_no_complete_looking_folder(class_folder, tmp_path):
    (tmp_path / "bad").mkdir()
    config = tiny(class_folder, tmp_path / "bad")
    with pytest.raises(thaw.ThawError, match="already exists"):
        thaw.fit(config, quiet=True)
    assert not any((tmp_path / "bad").iterdir())  # the existing folder is untouched


def test_weight_interpolation_step_wise_ft(class_folder, tmp_path):
    """WiSE-FT as a plan: no training, phase1 and phase2 weights mixed, alpha chosen on validation."""
    plans = [
        PhasePlan("phase1", "head", lr=1e-2, epochs=2),
        PhasePlan("phase2", "all", lr=1e-2, lr_ratio=10, epochs=1),
        PhasePlan("wise-ft", interpolate_from="phase1", alphas=(0.0, 0.5, 1.0)),
    ]
    result = thaw.fit(tiny(class_folder, tmp_path / "wise"), quiet=True, plans=plans)
    wise = result.summary.phases["wise-ft"]
    assert [c["alpha"] for c in wise.curve] == [0.0, 0.5, 1.0] and wise.alpha in (0.0, 0.5, 1.0)
    chosen = next(c for c in wise.curve if c["alpha"] == wise.alpha)
    assert wise.val.accuracy == pytest.approx(chosen["val_accuracy"])
    assert max(c["val_accuracy"] for c in wise.curve) == pytest.approx(wise.val.accuracy)
    by_alpha = {c["alpha"]: c["val_accuracy"] for c in wise.curve}  # the ends are the two plans' weights
    assert by_alpha[0.0] == pytest.approx(result.summary.phases["phase1"].val.accuracy)
    assert by_alpha[1.0] == pytest.approx(result.summary.phases["phase2"].val.accuracy)
    p1, p2, mixed = (
        load_file(str(result.path / "checkpoints" / f"{n}.safetensors"))
        for n in ("phase1", "phase2", "wise-ft")
    )
    k = "head.1.weight"
    assert torch.allclose(mixed[k], wise.alpha * p2[k] + (1 - wise.alpha) * p1[k])
    with pytest.raises(thaw.ThawError, match="interpolate_from"):
        thaw.fit(
            tiny(class_folder, tmp_path / "bad"),
            quiet=True,
            plans=[plans[0], PhasePlan("w", interpolate_from="x")],
        )
