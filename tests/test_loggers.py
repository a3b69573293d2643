"""--logger passes each phase to a Lightning logger under RUN/logs/; tensorboard works offline."""

import pytest
from conftest import tiny_flags

from thaw.cli import main

TINY = [*tiny_flags(), "--phase1-epochs", "2", "--phase2-epochs", "1", "--phase1", "online", "--quiet"]


def test_tensorboard_logger_writes_every_phase_offline(tmp_path):
    from conftest import make_class_folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_class_folder(tmp_path / "shapes")
    out = tmp_path / "run"
    assert main(["fit", str(data), *TINY, "--out", str(out), "--logger", "tensorboard"]) == 0
    for phase, epochs in (("phase1", 2), ("phase2", 1)):
        events = EventAccumulator(str(out / "logs" / "tensorboard" / phase)).Reload()
        tags = events.Tags()["scalars"]
        assert {"val_loss", "val_acc", "train_loss"} <= set(tags), tags
        assert len(events.Scalars("val_loss")) == epochs
        assert any(t.startswith("lr-") for t in tags), tags  # every parameter group's LR
    assert (out / "metrics.csv").is_file() and (out / "summary.json").is_file()  # still the source of truth


def test_unknown_or_missing_logger_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import importlib.util

    from thaw.core.errors import ThawError
    from thaw.train.loggers import check_logger

    with pytest.raises(SystemExit):
        main(["fit", "builtin:digits", "--logger", "comet"])
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "mlflow" else real(n, *a))
    with pytest.raises(ThawError, match=r"pip install .thaw-transfer\[mlflow\]."):
        check_logger("mlflow")
