"""--logger passes each phase to a Lightning logger: csv and tensorboard under RUN/logs/, offline;
MLflow and W&B as one tracking run per fit, where their environment variables say."""

import json
import struct
from collections import Counter
from pathlib import Path

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


def _fit_logged(tmp_path, logger: str) -> Path:
    from conftest import make_class_folder

    data = make_class_folder(tmp_path / "shapes")
    out = tmp_path / "run"
    assert main(["fit", str(data), *TINY, "--out", str(out), "--logger", logger]) == 0
    return out


def test_mlflow_one_tracking_run_per_fit_where_the_environment_says(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME are MLflow's to read: a local file store here. One
    run for the whole fit: each plan's epochs as its own series, the resolved config as parameters, the
    final figures, and the report, the model card and the model as artifacts."""
    pytest.importorskip("mlflow", reason="--logger mlflow needs mlflow (the test extra has mlflow-skinny)")
    from mlflow import MlflowClient

    store = f"file:{tmp_path / 'team-store'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind a switch
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team")
    out = _fit_logged(tmp_path, "mlflow")
    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["phase2.epochs"] == "1" and run.data.params["model.name"] == "mobilenet_v3_small"
    assert run.data.params["phase2.warmup_epochs"] == "1.0"  # the resolved config, defaults included
    run_id = run.info.run_id
    assert [len(client.get_metric_history(run_id, f"{p}-val_loss")) for p in ("phase1", "phase2")] == [2, 1]
    summary = json.loads((out / "summary.json").read_text())
    saved = summary["phases"][summary["final_phase"]]["test"]["accuracy"]
    assert run.data.metrics["result/saved/test_accuracy"] == pytest.approx(saved)
    assert "result/gain/phase2/val_accuracy" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "MODEL_CARD.md", "model.safetensors", "config.yaml"} <= artifacts
    assert json.loads((out / "logs" / "tracking.json").read_text()) == {"mlflow": run_id}  # for thaw resume
    assert not (out / "logs" / "mlruns").exists()  # not pinned inside the run folder any more


def wandb_records(path: Path):
    """The records of a W&B run file (``run-<id>.wandb``): LevelDB's log format (7-byte header, blocks of
    32 KiB, records split into chunks) holding protobuf Records. Read by hand: wandb 0.31 reads these
    files in its Go core and no longer ships a Python reader."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, block, chunks = 7, 32768, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or length == kind == 0:  # the block's zero trailer
            pos += left
            continue
        chunks += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def test_wandb_offline_one_run_per_fit_with_config_summary_and_artifact(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="--logger wandb needs wandb (in the test extra)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "team"))
    monkeypatch.setenv("WANDB_PROJECT", "team")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = _fit_logged(tmp_path, "wandb")
    (run_file,) = (tmp_path / "team" / "wandb").glob("offline-run-*/run-*.wandb")  # one run, where told
    records = list(wandb_records(run_file))
    kinds = Counter(r.WhichOneof("record_type") for r in records)
    assert kinds["run"] == 1 and kinds["artifact"] == 1 and kinds["exit"] == 1
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "team" and run.display_name == "run"
    assert json.loads((out / "logs" / "tracking.json").read_text()) == {"wandb": run.run_id}

    def of(kind: str, field: str) -> dict:  # the items of every record of a kind, by key
        items = [i for r in records if r.WhichOneof("record_type") == kind for i in getattr(r, field).update]
        return {i.key or "/".join(i.nested_key): i.value_json for i in items}

    config = of("config", "config")
    assert json.loads(config["phase2.epochs"]) == 1 and json.loads(config["phase2.warmup_epochs"]) == 1.0
    summary = of("summary", "summary")
    assert {"phase1-val_loss", "phase2-val_loss", "result/saved/val_accuracy"} <= set(summary)
    artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
    files = {e.path for e in artifact.manifest.contents}
    assert artifact.type == "model" and {"report.html", "MODEL_CARD.md", "model.safetensors"} <= files
