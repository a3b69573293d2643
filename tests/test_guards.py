"""A loss that becomes NaN stops its phase on the last good weights; nothing non-finite is saved or loaded."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from thaw.cli import main
from thaw.core.errors import ThawError
from thaw.train import module

TINY = ["--model", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--batch-size", "8"]


def test_nan_loss_stops_the_phase_and_keeps_good_weights(class_folder, tmp_path, monkeypatch, capsys):
    step = module.PhaseModule._step

    def poisoned(self, batch, split):  # phase 2, epoch 2: the loss becomes NaN
        loss = step(self, batch, split)
        if split == "train" and self.index == 1 and self.current_epoch == 1:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(module.PhaseModule, "_step", poisoned)
    out = tmp_path / "run"
    epochs = ["--phase1-epochs", "1", "--phase2-epochs", "3"]
    assert main(["fit", str(class_folder), *TINY, *epochs, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "phase2 stopped in epoch 2: the training loss became nan" in err
    summary = json.loads((out / "summary.json").read_text())  # strict JSON: no bare NaN
    phase2 = summary["phases"]["phase2"]
    assert phase2["halted"].startswith("epoch 2") and phase2["epochs_run"] == 2
    assert phase2["best_epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_file(str(out / "model.safetensors")).values())
    assert main(["predict", str(out), str(class_folder), "--csv"]) == 0
    assert ",nan" not in capsys.readouterr().out


def test_load_refuses_non_finite_weights(class_folder, tmp_path, capsys):
    from thaw.core.config import ModelConfig
    from thaw.models import build_classifier, save_model

    model = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, ["a", "b"], 32)
    path = tmp_path / "model.safetensors"
    save_model(model, path)
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(path), metadata=meta)
    assert main(["predict", str(path), str(class_folder)]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and key in err
    with pytest.raises(ThawError, match="non-finite"):
        save_model(_poison(model), tmp_path / "again.safetensors")


def _poison(model):
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))
    return model
