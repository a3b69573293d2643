"""Freezing really freezes: checked bitwise after real Lightning training."""

import copy

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


def quiet_trainer(epochs, callbacks=(), checkpointing=False):
    return L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=checkpointing,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=list(callbacks),
    )


def train_phase(model, plan):
    module = PhaseModule(model, plan)
    trainer = quiet_trainer(plan.epochs)
    trainer.fit(module, tiny_loader(), tiny_loader())
    return trainer


def measured_statistics_model():
    """MobileNetV2 (batch norm eps 1e-5, as in most pretrained backbones; v3-small's is 1e-3) whose
    "pretrained" statistics were measured on other images, as ImageNet's are."""
    torch.manual_seed(0)
    m = build_classifier(ModelConfig(name="mobilenet_v2", weights="none"), 2, image_size=32)
    bns = [bn for bn in m.backbone.modules() if isinstance(bn, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = None  # a cumulative average over the pass below
    m.backbone.train()
    with torch.no_grad():
        m.backbone(torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 1.3 + 0.2)
    for bn in bns:
        bn.momentum = 0.1
    return m


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
    module = PhaseModule(m, PhasePlan("phase2", "all", bn_policy="frozen"))
    module.train()
    bns = [x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert bns and not any(b.training for b in bns)
    assert m.head.training
    # the default, matched: the trained groups' batch norms train, the others stay in eval mode
    m = model()
    PhaseModule(m, PhasePlan("phase2", "last:2")).train()
    n = len(m.layer_groups)
    trained = {id(x) for g in m.group_modules([n - 2, n - 1]) for x in g.modules()}
    bns = [x for x in m.backbone.modules() if isinstance(x, torch.nn.BatchNorm2d)]
    assert {b.training for b in bns if id(b) in trained} == {True}
    assert {b.training for b in bns if id(b) not in trained} == {False}


def bn_output_moments(model, images) -> list[torch.Tensor]:
    """Each backbone batch norm's output mean and standard deviation per channel on ``images`` (eval mode):
    measured from the outputs, independently of how the statistics were set."""
    found, hooks = [], []

    def moments(module, args, out):
        found.append(torch.stack([out.mean((0, 2, 3)), out.std((0, 2, 3))]))

    for m in model.backbone.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(moments))
    model.eval()
    with torch.no_grad():
        model.backbone(images)
    for h in hooks:
        h.remove()
    return found


def test_tracked_statistics_hold_each_bn_output_where_the_phase_began():
    """``--bn-policy tracked``: after the weights below them move, every frozen batch norm's output on the
    calibration images has the mean and spread it had when the phase began, and nothing else changed."""
    from types import SimpleNamespace

    from thaw.train.tracked import TrackedStatistics

    m = measured_statistics_model()
    images = torch.randn(48, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    module = PhaseModule(m, PhasePlan("phase2", "all", bn_policy="tracked"))
    tracker = TrackedStatistics(images)
    tracker.on_train_start(None, module)
    start = bn_output_moments(m, images)
    with torch.no_grad():  # as a phase of training moves them: every conv, a little
        g = torch.Generator().manual_seed(3)
        for conv in m.backbone.modules():
            if isinstance(conv, torch.nn.Conv2d):
                conv.weight.mul_(1 + 0.1 * torch.randn(conv.weight.shape, generator=g)).add_(0.005)
    weights = {k: v.clone() for k, v in m.state_dict().items() if "running" not in k}
    moved = bn_output_moments(m, images)
    assert max(float((a - b).abs().max()) for a, b in zip(moved, start)) > 0.5  # stale statistics: far off
    tracker.on_validation_start(SimpleNamespace(sanity_checking=False), module)
    held = bn_output_moments(m, images)
    bns = [bn for bn in m.backbone.modules() if isinstance(bn, torch.nn.BatchNorm2d)]
    assert len(held) == len(start) == len(bns) > 10
    # batch norm's eps bounds how narrow a layer can make its output: a channel whose input narrowed below
    # it gets running_var 0 and a wider output (in this random-init network, a few deep ones; rare in
    # pretrained ones, whose variances are far above eps)
    limited = [bn.running_var == 0 for bn in bns]
    assert sum(int(x.sum()) for x in limited) < 0.05 * sum(x.numel() for x in limited)
    for a, b, out in zip(held, start, limited):
        torch.testing.assert_close(a[:, ~out], b[:, ~out], rtol=2e-3, atol=2e-3)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in weights.items())  # only statistics were set
    assert all(bn.training is False for bn in m.backbone.modules() if isinstance(bn, torch.nn.BatchNorm2d))


def test_tracked_statistics_in_real_training_move_only_what_sits_above_the_trained_groups():
    """Through Lightning: with the last 2 groups trained, the statistics of every batch norm below them stay
    bitwise as they were (their inputs do not move); those above are set before each validation."""
    from thaw.train.tracked import TrackedStatistics

    m = model()
    torch.nn.init.normal_(m.head[-1].weight)
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plan = PhasePlan("phase2", "last:2", lr=1e-2, lr_ratio=1, epochs=2, bn_policy="tracked")
    module = PhaseModule(m, plan)
    tracker = TrackedStatistics(images)
    above = {id(b) for b in tracker.layers(module)}
    bns = {n: b for n, b in m.backbone.named_modules() if isinstance(b, torch.nn.BatchNorm2d)}
    assert 0 < len(above) < len(bns)
    before = {n: (b.running_mean.clone(), b.running_var.clone()) for n, b in bns.items()}
    trainer = quiet_trainer(2, [tracker])
    trainer.fit(module, tiny_loader(), tiny_loader())
    for name, b in bns.items():
        same = torch.equal(b.running_mean, before[name][0]) and torch.equal(b.running_var, before[name][1])
        assert same == (id(b) not in above), name


def test_matched_batch_norm_computes_phase_one_features_at_the_start():
    """``--bn-policy matched``: once the training batches' statistics are folded into the affine parameters,
    the network in eval mode computes what it did with the pretrained statistics (to float rounding), the
    trained batch norms train on batch statistics, and in train mode a whole batch also gives nearly the
    same logits (batch statistics instead of the folded ones; stale ImageNet ones would be far off)."""
    from types import SimpleNamespace

    from thaw.train.tracked import MatchedStatistics

    m = measured_statistics_model()
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    m.eval()
    with torch.no_grad():
        before = m.backbone(images)
    original = copy.deepcopy(m)
    module = PhaseModule(m, PhasePlan("phase2", "all", bn_policy="matched"))
    loader = DataLoader(TensorDataset(images, torch.zeros(64, dtype=torch.long)), batch_size=16)
    folded = MatchedStatistics(batches=4)
    folded.on_train_start(SimpleNamespace(train_dataloader=loader), module)
    assert folded.done and folded.state_dict() == {"done": True}
    bns = [b for b in m.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert all(b.training for b in bns)  # the policy trains them
    m.eval()
    with torch.no_grad():
        after = m.backbone(images)
    assert float(before.abs().mean()) > 0.1
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    for net in (m, original):
        net.train()
        for bn in net.backbone.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.momentum = 0.0  # batch statistics, the running ones left as they are
    with torch.no_grad():
        batch = m.backbone(images)
        unfolded = original.backbone(images)  # batch statistics on the pretrained affine: ``train``
        m.eval()
        frozen = m.backbone(images)
    off = float((batch - frozen).abs().mean() / frozen.abs().mean())
    assert off < 0.05, off
    assert float((unfolded - frozen).abs().mean() / frozen.abs().mean()) > 5 * off
    again = MatchedStatistics()
    again.load_state_dict({"done": True})  # resumed: the checkpoint's parameters are already folded
    weights = {k: v.clone() for k, v in m.state_dict().items()}
    again.on_train_start(SimpleNamespace(train_dataloader=loader), module)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in weights.items())


def test_matched_batch_norm_in_real_training_folds_only_the_trained_groups():
    """Through Lightning, last 2 groups trained: the batch norms below them keep their parameters and
    statistics bitwise; those in the trained groups were folded, then trained on batch statistics."""
    from thaw.train.tracked import MatchedStatistics

    m = model()
    plan = PhasePlan("phase2", "last:2", lr=1e-2, lr_ratio=1, epochs=1, bn_policy="matched")
    module = PhaseModule(m, plan)
    folded = MatchedStatistics()
    inside = {id(b) for b in folded.layers(module)}
    bns = {n: b for n, b in m.backbone.named_modules() if isinstance(b, torch.nn.BatchNorm2d)}
    assert 0 < len(inside) < len(bns)
    state = ("weight", "bias", "running_mean", "running_var")
    before = {n: [getattr(b, k).clone() for k in state] for n, b in bns.items()}
    trainer = quiet_trainer(1, [folded])
    trainer.fit(module, tiny_loader(), tiny_loader())
    assert folded.done
    for name, b in bns.items():
        same = all(torch.equal(getattr(b, k), s) for k, s in zip(state, before[name]))
        assert same == (id(b) not in inside), name


def test_precise_statistics_are_the_population_moments_of_each_trained_layers_input():
    """``tracked.precise``: each trained batch norm's running statistics become its input's mean and
    population variance over the batches, the layers below normalising by each batch as in training (an
    oracle that hooks a copy of the network in train mode); nothing else moves: parameters, the frozen
    groups' statistics, ``num_batches_tracked``, every module's mode."""
    from thaw.train.tracked import MatchedStatistics, precise

    m = measured_statistics_model()
    module = PhaseModule(m, PhasePlan("phase2", "last:2", bn_policy="matched"))
    layers = MatchedStatistics.layers(module)
    bns = [b for b in m.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    assert 0 < len(layers) < len(bns)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 3, 32, 32, generator=g) * 1.5 + 0.3, torch.zeros(8)) for _ in range(3)]
    oracle = copy.deepcopy(m)
    oracle.eval()
    copies = [b for b in oracle.backbone.modules() if isinstance(b, torch.nn.BatchNorm2d)]
    trained = [c for b, c in zip(bns, copies) if any(b is layer for layer in layers)]
    inputs: dict[int, list[torch.Tensor]] = {id(c): [] for c in trained}
    for c in trained:
        c.train()
        c.register_forward_pre_hook(lambda mod, args: inputs[id(mod)].append(args[0].double()))
    with torch.no_grad():
        for x, _ in batches:
            oracle.backbone(x)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    modes = [x.training for x in m.modules()]
    precise(module, layers, iter(batches), count=2)  # the first 2 batches only
    assert modes == [x.training for x in m.modules()]
    for c, layer in zip(trained, layers):
        seen = torch.cat(inputs[id(c)][:2])
        mean, var = seen.mean((0, 2, 3)), seen.var((0, 2, 3), unbiased=False)
        torch.testing.assert_close(layer.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(layer.running_var, var.float(), rtol=1e-5, atol=1e-6)
    moved = {id(b) for b in layers}
    for name, old in state.items():
        new = m.state_dict()[name]
        owner = m.get_submodule(name.rsplit(".", 1)[0])
        if name.endswith(("running_mean", "running_var")) and id(owner) in moved:
            assert not torch.equal(new, old), name
        else:
            assert torch.equal(new, old), name


def test_matched_validates_on_statistics_measured_at_the_epochs_end_weights(monkeypatch):
    """Through Lightning: ``matched`` measures its statistics before every validation (not during the
    sanity check), over ``precise_batches`` batches of the epoch's order; the model left at the end
    carries exactly those, not the moving average; ``precise_batches=0`` keeps the moving average."""
    from thaw.train import tracked
    from thaw.train.tracked import MatchedStatistics

    plan = PhasePlan("phase2", "last:2", lr=1e-2, lr_ratio=1, epochs=2, bn_policy="matched")
    calls = []
    real = tracked.precise
    monkeypatch.setattr(tracked, "precise", lambda *a, **k: (calls.append(a[3]), real(*a, **k)))
    results = {}
    for count in (1, 0):
        module = PhaseModule(model(), plan)
        trainer = quiet_trainer(2, [MatchedStatistics(precise_batches=count)])
        trainer.fit(module, tiny_loader(), tiny_loader())
        results[count] = module
    assert calls == [1, 1]  # two validations with 1 batch each; none with 0
    for count, module in results.items():
        layers = MatchedStatistics.layers(module)
        again = copy.deepcopy(module)
        real(again, MatchedStatistics.layers(again), tiny_loader(), 1)
        for b, c in zip(layers, MatchedStatistics.layers(again)):
            assert torch.equal(b.running_var, c.running_var) == (count == 1)


def test_matched_batch_norm_resumed_from_a_checkpoint_is_not_folded_twice(tmp_path):
    """The folded parameters are in the phase's checkpoint, so a resumed phase must not fold again: the
    callback's ``done`` travels in the checkpoint, is restored before the phase starts, and the resumed
    phase's start then leaves every parameter and statistic as the checkpoint had it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from thaw.train.tracked import MatchedStatistics

    plan = PhasePlan("phase2", "all", lr=1e-2, lr_ratio=1, epochs=2, bn_policy="matched")
    seen = []

    class Spy(MatchedStatistics):
        def on_train_start(self, trainer, pl_module):
            before = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
            super().on_train_start(trainer, pl_module)
            after = pl_module.model.state_dict()
            seen.append(all(torch.equal(before[k], after[k]) for k in before))

    def run(epochs, callbacks=(), ckpt=None):
        trainer = quiet_trainer(epochs, [Spy(), *callbacks], checkpointing=bool(callbacks))
        trainer.fit(PhaseModule(model(), plan), tiny_loader(), tiny_loader(), ckpt_path=ckpt)

    run(1, [ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["callbacks"]
    assert [v for k, v in state.items() if k.endswith("Spy")] == [{"done": True}]
    run(2, ckpt=tmp_path / "last.ckpt")
    assert seen == [False, True]  # folded at the start, left alone when resumed


def test_wise_ft_mixes_batch_norm_as_one_affine_map_and_alpha_0_is_phase_1():
    """Under a policy that trains batch norm, phase 2's statistics are not phase 1's: WiSE-FT re-expresses
    phase 1's batch norms on phase 2's statistics first (``steps.aligned``), so alpha 0 computes phase 1
    and alpha 1 phase 2, and a layer whose statistics did not move is mixed bitwise as before."""
    from thaw.train.steps import aligned, mix

    net = measured_statistics_model().eval()  # statistics measured, so the random features are not ~0
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 1.3 + 0.2
    origin = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        start = net.backbone(x)  # the features (the new head is zero)
        bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in bns[:-1]:  # phase 2 moved these statistics and weights; the last one it left alone
            bn.running_mean.add_(0.3 * torch.randn_like(bn.running_mean))
            bn.running_var.mul_(torch.rand_like(bn.running_var) * 4 + 0.25)
            bn.weight.mul_(1.5)
        end = copy.deepcopy(net.state_dict())
        finish = net.backbone(x)
        ready = aligned(net, origin, end)
        net.load_state_dict(mix(ready, end, 0.0))
        torch.testing.assert_close(net.backbone(x), start, rtol=1e-4, atol=1e-4 * start.abs().max().item())
        net.load_state_dict(mix(ready, end, 1.0))
        assert torch.equal(net.backbone(x), finish)
    # half-way, each moved layer's affine map is the mean of the two ends' (the plain mix's is not)
    first, last = ([k for k, m in net.named_modules() if m is b][0] for b in (bns[0], bns[-1]))

    def affine(state):
        w, b, mean, var = (state[f"{first}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        a = w / (var + bns[0].eps).sqrt()
        return torch.cat([a, b - a * mean])

    halfway = (affine(origin) + affine(end)) / 2
    torch.testing.assert_close(affine(mix(ready, end, 0.5)), halfway, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(affine(mix(origin, end, 0.5)), halfway, rtol=1e-2, atol=1e-3)
    for key in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(ready[f"{last}.{key}"], origin[f"{last}.{key}"])
