"""Phase 2 that moves fewer weights (``PhasePlan.trainable``: bias, norm, lora, ssf): after real Lightning
training exactly the intended tensors change and every other one (batch-norm statistics included) is
bitwise as it was; LoRA and SSF merge into a plain model that predicts what the adapted one did, saves,
loads and exports to ONNX; LoRA reaches a ViT's attention; a bad setting is one line."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_flags
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from thaw.cli import main
from thaw.core.config import ModelConfig
from thaw.core.errors import ThawError
from thaw.core.strategies import PhasePlan
from thaw.models import build_classifier, load_model, save_model
from thaw.train import adapters
from thaw.train.module import PhaseModule


def loader(classes: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 32, 32, generator=g)
    return DataLoader(TensorDataset(x, torch.arange(16) % classes), batch_size=8)


def classifier(name: str = "mobilenet_v2", classes: int = 3):
    torch.manual_seed(0)
    model = build_classifier(ModelConfig(name=name, weights="none"), classes, image_size=32)
    nn.init.normal_(model.head[-1].weight)  # as after phase 1: a zero head passes no gradient back
    return model


def train(model, plan: PhasePlan) -> PhaseModule:
    """One plan trained by Lightning as ``recipe.run_phase`` does it, adapters left attached."""
    module = PhaseModule(model, plan)
    trainer = L.Trainer(
        max_epochs=plan.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    classes = model.spec.num_classes
    trainer.fit(module, loader(classes), loader(classes))
    return module


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def intended(model, trainable: str) -> set[str]:
    """The state-dict keys that must change, written out from the architecture (not from the code under
    test): MobileNetV2's convolutions have no bias, so its biases are the batch norms' shifts."""
    keys = {f"head.{n}" for n, _ in model.head.named_parameters()}
    for name, m in model.backbone.named_modules():
        prefix = f"backbone.{name}."
        bn = isinstance(m, nn.BatchNorm2d)
        if trainable == "bias" and bn or trainable in ("norm", "ssf") and bn:
            keys |= {prefix + "bias"} | ({prefix + "weight"} if trainable != "bias" else set())
        if isinstance(m, nn.Conv2d) and (trainable == "ssf" or trainable == "lora" and m.groups == 1):
            keys.add(prefix + "weight")  # LoRA leaves the depthwise convolutions (rank <= 9) alone
    return keys


@pytest.mark.parametrize("trainable", ["bias", "norm", "lora", "ssf"])
def test_exactly_the_intended_tensors_change(trainable):
    model = classifier()
    before = snapshot(model)
    plan = PhasePlan(
        "phase2", "all", lr=1e-2, lr_ratio=1.0, epochs=1, trainable=trainable, bn_policy="frozen"
    )
    module = train(model, plan)
    optimized = {id(p) for g in module.trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad}
    adapters.merge(model)
    after = snapshot(model)
    assert set(after) == set(before)  # merged: the plain model's keys, no adapter left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == intended(model, trainable)
    assert not any("running" in k or "num_batches" in k for k in changed)  # bn frozen: statistics too
    assert not any(parametrize_left(m) for m in model.modules())


def parametrize_left(module: nn.Module) -> bool:
    return torch.nn.utils.parametrize.is_parametrized(module)


def test_train_bn_policy_moves_the_statistics_and_nothing_else():
    model = classifier()
    before = snapshot(model)
    train(model, PhasePlan("phase2", "all", lr=1e-2, epochs=1, trainable="bias", bn_policy="train"))
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    stats = {k for k in before if "running" in k or "num_batches" in k}
    assert changed == intended(model, "bias") | stats


@pytest.mark.parametrize("trainable", ["lora", "ssf"])
def test_merged_model_predicts_what_the_adapted_one_did_saved_and_exported(trainable, tmp_path):
    model = classifier()
    train(model, PhasePlan("phase2", "all", lr=1e-2, lr_ratio=1.0, epochs=1, trainable=trainable))
    x = loader(3).dataset.tensors[0][:4]
    with torch.no_grad():
        adapted = model.eval()(x)
        adapters.merge(model)
        merged = model(x)
    torch.testing.assert_close(merged, adapted, rtol=1e-5, atol=1e-5)
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    with torch.no_grad():
        assert torch.equal(load_model(path).eval()(x), merged)
    if trainable != "lora":
        return
    import onnxruntime

    from thaw.use.export import export_run

    exported = export_run(path, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    image = torch.rand(2, 3, 32, 32)
    pre = model.preprocessing
    normalised = (image - torch.tensor(pre.mean).view(1, -1, 1, 1)) / torch.tensor(pre.std).view(1, -1, 1, 1)
    with torch.no_grad():
        expected = model(normalised).softmax(1).numpy()
    (probabilities,) = session.run(None, {"image": image.numpy()})
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


def test_lora_reaches_a_vit_attention_and_merges():
    model = classifier("vit_tiny_patch16_224", classes=2)
    before = snapshot(model)
    train(model, PhasePlan("phase2", "all", lr=1e-2, lr_ratio=1.0, epochs=1, trainable="lora"))
    x = loader(2).dataset.tensors[0][:4]
    with torch.no_grad():
        adapted = model.eval()(x)
        adapters.merge(model)
        torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-5)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    blocks = len(model.backbone.blocks)
    for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
        assert sum(f".{part}.weight" in k for k in changed) == blocks, part
    assert "backbone.patch_embed.proj.weight" in changed
    assert not any(k.endswith("bias") and k.startswith("backbone") for k in changed)  # LoRA: weights only
    assert not any("norm" in k or "pos_embed" in k or "cls_token" in k for k in changed)


def test_a_bad_setting_is_one_line(class_folder, capsys):
    with pytest.raises(ThawError, match="trainable 'loraa' is not one of all, bias, norm, lora, ssf"):
        PhasePlan("phase2", "all", trainable="loraa").validate()
    with pytest.raises(ThawError, match="train=head trains no layer group"):
        PhasePlan("phase2", "head", trainable="lora").validate()
    with pytest.raises(ThawError, match="features must be online"):
        PhasePlan("phase2", "last:2", features="cached", trainable="bias").validate()
    assert main(["fit", str(class_folder), *tiny_flags(), "--strategy", "lorra"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'lorra' is not one of" in err and "lora" in err


def test_lora_killed_mid_phase_and_resumed_equals_uninterrupted(tmp_path):
    """The adapters are attached before the last checkpoint is read back, with the same draws, so a LoRA
    phase killed mid-epoch resumes bitwise where an uninterrupted run ends (merged, saved)."""
    from conftest import make_class_folder
    from test_resume import kill_and_resume, outcome, same_model

    data = make_class_folder(tmp_path / "shapes", per_class=14)
    args = [*tiny_flags(), "--lr", "0.01", "--phase2-epochs", "3", "--patience", "5", "--strategy", "lora"]
    args += ["--quiet"]
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "whole")]) == 0
    kill_and_resume(data, args, tmp_path / "run", "phase2, mid-epoch 2")
    assert outcome(tmp_path / "run") == outcome(tmp_path / "whole")
    assert same_model(tmp_path / "run", tmp_path / "whole")


def test_the_lr_finder_sweeps_a_lora_plan_and_restores_the_plain_model():
    from thaw.train.lr_find import sweep

    model = classifier()
    before = snapshot(model)
    batches = iter(loader(3))
    plan = PhasePlan("phase2", "all", lr_ratio=1.0, trainable="lora")
    result = sweep(model, plan, batches, [1e-4, 1e-3], swept="backbone")
    assert len(result.lrs) == 2
    after = snapshot(model)
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
