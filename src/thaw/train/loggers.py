"""``--logger csv|tensorboard|mlflow|wandb``: the run also logged to one of Lightning's loggers, with the
learning rate of every parameter group. The run folder's own files (``metrics.csv``, ``summary.json``)
stay the source of truth; the logger is a view.

``csv`` and ``tensorboard`` write ``RUN/logs/<logger>/<plan>/``. ``mlflow`` and ``wandb`` are trackers a
team shares: one tracking run per ``thaw fit`` (its id kept in ``RUN/logs/tracking.json``, so ``thaw
resume`` goes on in the same one), each plan's epochs as its own metric series (``phase1-val_loss``, ...),
and at the end (:func:`track_result`) the resolved config as parameters, the final metrics, and
``report.html``, ``MODEL_CARD.md`` and the model as artifacts. Where they go is the trackers' own
settings, from their environment variables: ``MLFLOW_TRACKING_URI`` and ``MLFLOW_EXPERIMENT_NAME``
(default experiment ``thaw``); ``WANDB_PROJECT`` (default ``thaw``), ``WANDB_ENTITY``, ``WANDB_MODE``
(``offline``: no network) and ``WANDB_DIR`` (default ``RUN/logs``)."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from pathlib import Path

from thaw.core.errors import ThawError
from thaw.train import distributed

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
INSTALL = {  # the extra that brings each logger's package
    "tensorboard": "pip install 'thaw-transfer[tensorboard]'",
    "mlflow": "pip install 'thaw-transfer[mlflow]'",
    "wandb": "pip install 'thaw-transfer[wandb]'",
}
TRACKERS = ("mlflow", "wandb")  # one tracking run per thaw fit, shared through a server or a folder
ARTIFACTS = ("report.html", "MODEL_CARD.md", "model.safetensors", "summary.json", "config.yaml")
_WANDB_RUNS: dict[str, object] = {}  # this process's open W&B runs by id: every plan logs to the same one


def check_logger(name: str) -> None:
    """Fail before training, not after the first phase, when the logger's package is missing."""
    package = PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None and not _tensorboardx(name):
        raise ThawError(f"--logger {name} needs the {package} package: {INSTALL[name]}")


def _tensorboardx(name: str) -> bool:
    return name == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None


def lightning_logger(name: str, run_dir, plan: str):
    """The Lightning logger for one plan, or False (Lightning's "no logger")."""
    if name == "none":
        return False
    check_logger(name)
    from lightning.pytorch import loggers

    if not distributed.is_zero():  # loggers log on rank 0 only: the other ranks get none
        return False
    logs = Path(run_dir) / "logs"
    if name == "csv":
        return loggers.CSVLogger(logs, name="csv", version=plan)
    if name == "tensorboard":
        return loggers.TensorBoardLogger(logs, name="tensorboard", version=plan, default_hp_metric=False)
    if name == "mlflow":
        import mlflow

        class SharedRun(loggers.MLFlowLogger):
            def finalize(self, status: str = "success") -> None:
                """The tracking run goes on to the next plan; :func:`track_result` ends it."""

        run_id = _mlflow_run(Path(run_dir))
        return SharedRun(run_id=run_id, prefix=plan, tracking_uri=mlflow.get_tracking_uri())
    return loggers.WandbLogger(experiment=_wandb_run(Path(run_dir)), prefix=plan)


def logger_callbacks(name: str) -> list:
    """With a logger, Lightning's LearningRateMonitor logs every parameter group's LR each epoch."""
    if name == "none":
        return []
    from lightning.pytorch.callbacks import LearningRateMonitor

    return [LearningRateMonitor(logging_interval="epoch")]


def _ids(run_dir: Path) -> dict:
    path = run_dir / "logs" / "tracking.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _keep_id(run_dir: Path, tracker: str, run_id: str) -> None:
    path = run_dir / "logs" / "tracking.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**_ids(run_dir), tracker: run_id}, indent=2))


def _run_name(run_dir: Path) -> str:
    return run_dir.name.removesuffix(".incomplete")  # the staging folder's final name


def _mlflow_run(run_dir: Path) -> str:
    """The run's MLflow run id: created at its first plan (experiment ``$MLFLOW_EXPERIMENT_NAME`` or thaw,
    at ``$MLFLOW_TRACKING_URI`` or MLflow's default), the same one after."""
    known = _ids(run_dir).get("mlflow")
    if known:
        return known
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "thaw"
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(
        experiment_id, run_name=_run_name(run_dir), tags={"thaw.run_folder": str(run_dir)}
    )
    _keep_id(run_dir, "mlflow", run.info.run_id)
    return run.info.run_id


def _wandb_run(run_dir: Path):
    """The run's W&B run, opened at its first plan and kept open to the end (resumed after a restart)."""
    import wandb

    run_id = _ids(run_dir).get("wandb")
    if run_id in _WANDB_RUNS:
        return _WANDB_RUNS[run_id]
    run_id = run_id or secrets.token_hex(6)  # W&B ids: lower-case letters and digits
    _keep_id(run_dir, "wandb", run_id)
    save = Path(os.environ.get("WANDB_DIR") or run_dir / "logs")
    save.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        id=run_id,
        resume="allow",
        project=os.environ.get("WANDB_PROJECT") or "thaw",
        name=_run_name(run_dir),
        dir=str(save),
    )
    _WANDB_RUNS[run_id] = run
    return run


def track_result(name: str, run_dir: Path, config: dict, metrics: dict[str, float]) -> None:
    """At the end of a run logged to a tracker: ``config`` (flat) as parameters, ``metrics`` as the final
    metrics, the run folder's report, model card, model, summary and config as artifacts; then the
    tracking run ends. Nothing for the other loggers."""
    if name not in TRACKERS:
        return
    files = [run_dir / f for f in ARTIFACTS if (run_dir / f).is_file()]
    if name == "mlflow":
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        client, run_id = MlflowClient(), _mlflow_run(run_dir)
        params = [Param(k, str(v)[:6000]) for k, v in config.items()]  # MLflow's limit on a value
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a batch
            client.log_batch(run_id, params=params[start : start + 100])
        final = [Metric(k, float(v), 0, 0) for k, v in metrics.items()]
        client.log_batch(run_id, metrics=final)
        for f in files:
            client.log_artifact(run_id, str(f))
        client.set_terminated(run_id, "FINISHED")
        return
    import wandb

    run = _wandb_run(run_dir)
    run.config.update(config, allow_val_change=True)
    run.summary.update(metrics)
    artifact = wandb.Artifact(f"thaw-{run.id}", type="model", description=f"thaw run {_run_name(run_dir)}")
    for f in files:
        artifact.add_file(str(f))
    run.log_artifact(artifact)
    run.finish()
    _WANDB_RUNS.pop(run.id, None)
