"""Freezing really freezes: checked bitwise after real Lightning training."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from thaw.config import ModelConfig, PhaseConfig
from thaw.freeze import last_groups, set_trainable
from thaw.models import build_classifier
from thaw.train.module import PhaseModule, PhasePlan


def tiny_loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    y = torch.arange(16) % 2
    return DataLoader(TensorDataset(x, y), batch_size=8)


def train_phase(model, plan, bn_policy):
    set_trainable(model, plan.groups, bn_policy)
    module = PhaseModule(model, plan, bn_policy)
    trainer = L.Trainer(
        max_epochs=plan.config.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, tiny_loader(), tiny_loader())
    return trainer


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def model():
    torch.manual_seed(0)
    return build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, image_size=32)


def test_phase1_leaves_backbone_and_bn_statistics_bitwise_unchanged():
    m = model()
    before = snapshot(m.backbone)
    head_before = snapshot(m.head)
    trainer = train_phase(m, PhasePlan("phase1", [], 1e-2, 0.0, PhaseConfig(epochs=2)), "frozen")
    after = snapshot(m.backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, running_mean/var, num_batches
    assert not all(torch.equal(head_before[k], snapshot(m.head)[k]) for k in head_before)
    optimizer = trainer.optimizers[0]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in m.head.parameters()}


@pytest.mark.parametrize("policy, stats_change", [("frozen", False), ("train", True)])
def test_phase2_lr_ratio_and_bn_policy(policy, stats_change):
    m = model()
    torch.nn.init.normal_(m.head[-1].weight)  # as after phase 1: a zero head would pass no gradient back
    groups = last_groups(m, 2)
    before = snapshot(m.backbone)
    trainer = train_phase(m, PhasePlan("phase2", groups, 1e-3, 1e-3 / 25, PhaseConfig(epochs=1)), policy)
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizers[0].param_groups}
    assert lrs["head"] == pytest.approx(1e-3) and lrs["backbone"] == pytest.approx(1e-3 / 25)
    in_optimizer = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in m.parameters() if p.requires_grad}
    trainable = set(m.layer_groups[-2] + m.layer_groups[-1])
    after = snapshot(m.backbone)
    for name in dict(m.backbone.named_parameters()):
        assert torch.equal(before[name], after[name]) == (name not in trainable), name
    stats = [k for k in before if k.endswith("running_mean")]
    frozen_stats = [k for k in stats if k.replace("running_mean", "weight") not in trainable]
    unfrozen_stats = [k for k in stats if k not in frozen_stats]
    assert all(torch.equal(before[k], after[k]) for k in frozen_stats)
    assert any(not torch.equal(before[k], after[k]) for k in unfrozen_stats) == stats_change


def test_bn_layers_stay_in_eval_mode_after_train_calls():
    m = model()
    plan = PhasePlan("phase2", last_groups(m, None), 1e-3, 1e-4, PhaseConfig(epochs=1))
    module = PhaseModule(m, plan, "frozen")
    module.train()
    bns = [x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.head.training
