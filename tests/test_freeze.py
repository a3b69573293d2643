"""Freezing really freezes: checked bitwise after real Lightning training."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from thaw.core.config import ModelConfig
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier
from thaw.train.module import PhaseModule


def tiny_loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    y = torch.arange(16) % 2
    return DataLoader(TensorDataset(x, y), batch_size=8)


def train_phase(model, plan):
    module = PhaseModule(model, plan)
    trainer = L.Trainer(
        max_epochs=plan.epochs,
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
    trainer = train_phase(m, PhasePlan("phase1", "head", lr=1e-2, epochs=2))
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
    before = snapshot(m.backbone)
    plan = PhasePlan("phase2", "last:2", lr=1e-3, lr_ratio=25, epochs=1, bn_policy=policy)
    trainer = train_phase(m, plan)
    lrs = {g["name"]: g["initial_lr"] for g in trainer.optimizers[0].param_groups}
    n = len(m.layer_groups)
    assert lrs["head"] == pytest.approx(1e-3)
    assert lrs[f"group{n - 1}"] == pytest.approx(1e-3 / 25) and lrs[f"group{n - 2}"] == pytest.approx(
        1e-3 / 25
    )
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


def test_fastai_bn_policy_trains_bn_everywhere_even_in_frozen_groups():
    """fastai's ``train_bn=True``: batch-norm layers of frozen groups keep training (affine parameters)
    and updating their running statistics; every other frozen parameter stays bitwise unchanged."""
    m = model()
    before = snapshot(m.backbone)
    trainer = train_phase(m, PhasePlan("phase1", "head", lr=1e-2, lr_ratio=10, epochs=1, bn_policy="fastai"))
    after = snapshot(m.backbone)
    bn_names = {
        f"{mod_name}.{p}"
        for mod_name, mod in m.backbone.named_modules()
        if isinstance(mod, torch.nn.BatchNorm2d)
        for p in ("weight", "bias", "running_mean", "running_var")
    }
    assert all(not torch.equal(before[k], after[k]) for k in bn_names if k.endswith("running_mean"))
    assert any(not torch.equal(before[k], after[k]) for k in bn_names if k.endswith(".bias"))
    others = [k for k in before if k not in bn_names and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], after[k]) for k in others)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert all(
        g["initial_lr"] == pytest.approx(1e-3) for name, g in groups.items() if name.startswith("group")
    )


def test_bn_layers_stay_in_eval_mode_after_train_calls():
    m = model()
    module = PhaseModule(m, PhasePlan("phase2", "all"))
    module.train()
    bns = [x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.head.training
