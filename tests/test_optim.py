"""Parameter groups, layer-wise learning rates and the warmup + cosine schedule."""

import math

import pytest
import torch

from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier
from thaw.train.freeze import set_trainable
from thaw.train.optim import param_groups, warmup_cosine


def test_no_weight_decay_on_biases_norms_and_tokens_and_nothing_frozen():
    model = build_classifier(ModelConfig(name="timm/vit_tiny_patch16_224", weights="none"), 3, image_size=32)
    n = len(model.layer_groups)
    set_trainable(model, [0, n - 1], "frozen")
    groups = param_groups(model, 1e-3, [1e-4] + [0.0] * (n - 2) + [2e-4], 0.05, 1e-4)
    names = {id(p): n for n, p in model.backbone.named_parameters()}
    for g in groups:
        for p in g["params"]:
            assert p.requires_grad
            name = names.get(id(p), "head")
            no_decay = p.ndim <= 1 or name in ("pos_embed", "cls_token")
            assert (g["weight_decay"] == 0.0) == no_decay, name
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 1e-3 and by_name["head_no_decay"]["weight_decay"] == 0.0
    assert by_name["group0_no_decay"]["lr"] == 1e-4 and by_name[f"group{n - 1}"]["lr"] == 2e-4
    assert {g["name"].removesuffix("_no_decay") for g in groups} == {"head", "group0", f"group{n - 1}"}
    pos = dict(model.backbone.named_parameters())["pos_embed"]
    assert any(p is pos for p in by_name["group0_no_decay"]["params"])  # a 3-d tensor, still no decay


def test_layer_wise_lr_decay_and_explicit_group_lrs():
    plan = PhasePlan("ft", "last:3", lr=1e-2, lr_ratio=10, layer_decay=0.5)
    assert plan.group_lr(5) == pytest.approx([0.0, 0.0, 2.5e-4, 5e-4, 1e-3])
    assert PhasePlan("p", "head").group_lr(4) == [0.0] * 4
    assert PhasePlan("p", "first:1", lr=1e-3, lr_ratio=1).group_lr(3) == pytest.approx([1e-3, 0.0, 0.0])
    explicit = PhasePlan("p", "groups:0,2", group_lrs=(1e-5, 1e-4, 1e-3))
    assert explicit.group_lr(3) == [1e-5, 0.0, 1e-3]
    with pytest.raises(ThawError, match="group_lrs has 3 values"):
        explicit.group_lr(4)


@pytest.mark.parametrize(
    "plan, message",
    [
        (PhasePlan("p", "some"), "must be head, all, last:N"),
        (PhasePlan("p", "last:0"), "must be head, all, last:N"),
        (PhasePlan("p", lr_ratio=0.5), "lr_ratio"),
        (PhasePlan("p", layer_decay=1.5), "layer_decay"),
        (PhasePlan("p", regularizer="l3"), "regularizer"),
        (PhasePlan("p", bn_policy="magic"), "bn_policy"),
        (PhasePlan("a/b"), "file name"),
        (PhasePlan("p", epochs=0), "epochs"),
        (PhasePlan("p", optimizer="adam"), "optimizer"),
    ],
)
def test_bad_plans_name_the_setting(plan, message):
    from thaw.core.errors import ThawError

    with pytest.raises(ThawError, match=message):
        plan.validate()


def test_warmup_then_cosine_to_zero_or_constant():
    p = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [p], "lr": 0.1}])
    schedule = warmup_cosine(optimizer, warmup_steps=4, total_steps=14, cosine=True)
    lrs = []
    for _ in range(14):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[9] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] < 0.01 and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    optimizer = torch.optim.SGD([{"params": [p], "lr": 0.1}])
    constant = warmup_cosine(optimizer, warmup_steps=0, total_steps=10, cosine=False)
    for _ in range(5):
        optimizer.step()
        constant.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_the_head_can_warm_up_longer_than_the_backbone():
    """``head_warmup_steps``: the head's groups (named ``head*``) ramp over their own steps, the others as
    before, and the head never runs above the others' factor once their cosine has begun."""
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW(
        [{"name": "head", "params": [p], "lr": 1e-3}, {"name": "group0", "params": [q], "lr": 1e-4}]
    )
    schedule = warmup_cosine(optimizer, warmup_steps=2, total_steps=10, cosine=True, head_warmup_steps=6)
    head, backbone = [], []
    for _ in range(10):
        head.append(optimizer.param_groups[0]["lr"])
        backbone.append(optimizer.param_groups[1]["lr"])
        optimizer.step()
        schedule.step()
    cosine = [0.5 * (1 + math.cos(math.pi * (step - 2) / 8)) for step in range(2, 10)]
    assert backbone == pytest.approx([0.5e-4, 1e-4] + [1e-4 * c for c in cosine])
    ramp = [(step + 1) / 6 for step in range(6)]
    expected = ramp[:2] + [min(r, c) for r, c in zip(ramp[2:], cosine)] + cosine[4:]
    assert head == pytest.approx([1e-3 * f for f in expected])
    assert head[0] == pytest.approx(1e-3 / 6) and head[5] == pytest.approx(1e-3 * cosine[3])
    # a head warmup no longer than the others' is theirs: the same schedule for every group
    for steps in (0, 2):
        optimizer = torch.optim.SGD(
            [{"name": "head", "params": [p], "lr": 0.1}, {"name": "g", "params": [q], "lr": 0.1}]
        )
        warmup_cosine(optimizer, 2, 10, True, steps)
        assert optimizer.param_groups[0]["lr"] == optimizer.param_groups[1]["lr"] == pytest.approx(0.05)


def test_the_optimizer_setting_reaches_every_trained_plan():
    """``--optimizer sgd``: Nesterov SGD with momentum 0.9 over the plan's groups; AdamW by default."""
    from types import SimpleNamespace

    from thaw.core.config import RunConfig, override
    from thaw.core.strategies import plans_for
    from thaw.train.module import PhaseModule

    config = override(RunConfig(), {"optimizer": "sgd", "strategy": "gradual"})
    assert {p.optimizer for p in plans_for(config)} == {"sgd"}
    model = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, image_size=32)
    for name, kind in (("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)):
        module = PhaseModule(model, PhasePlan("phase2", "all", optimizer=name))
        module.trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
        optimizer = module.configure_optimizers()["optimizer"]
        assert type(optimizer) is kind
        if name == "sgd":
            assert all(g["momentum"] == 0.9 and g["nesterov"] for g in optimizer.param_groups)


DEFAULT_RATIO = 10  # the documented default backbone LR ratio (docs/concepts/defaults.md, issue 25)


def test_a_default_run_trains_the_backbone_at_the_documented_ratio(shapes, tmp_path, monkeypatch):
    """Read from the optimizer a real default run builds (not from the plan's fields): in phase 2 every
    backbone group that trains starts at the default LR / DEFAULT_RATIO, the solved head with them
    (``--phase2-head-lr backbone``, issue 25), and no parameter is in two groups."""
    from conftest import tiny_config

    import thaw

    built = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    thaw.fit(tiny_config(shapes, tmp_path / "run"), quiet=True)
    assert built, "no AdamW was built"
    phase2 = built[-1]
    start = {g["name"]: g["initial_lr"] for g in phase2.param_groups}  # before the warmup/cosine factor
    expected = pytest.approx(thaw.RunConfig().lr / DEFAULT_RATIO, rel=1e-12)
    assert start["head"] == expected and start["head_no_decay"] == expected, start
    backbone = {name: lr for name, lr in start.items() if name.startswith("group")}
    assert backbone and all(lr == expected for lr in backbone.values()), start
    # the LR the optimizer used on its last step is the same in every group (the schedule scales them alike)
    now = {g["name"]: g["lr"] for g in phase2.param_groups}
    assert all(now[name] == pytest.approx(now["head"], rel=1e-9) for name in backbone)
    held = [id(p) for g in phase2.param_groups for p in g["params"]]
    assert len(held) == len(set(held))  # no parameter in two groups (it would train at two LRs)
