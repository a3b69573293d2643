"""``--logger csv|tensorboard|mlflow|wandb``: each phase also logged to one of Lightning's loggers, in
``RUN/logs/<logger>/`` (one version per plan), with the learning rate of every parameter group. The run
folder's own files (``metrics.csv``, ``summary.json``) stay the source of truth; the logger is a view."""

from __future__ import annotations

import importlib.util

from thaw.core.errors import ThawError

PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def check_logger(name: str) -> None:
    """Fail before training, not after the first phase, when the logger's package is missing."""
    package = PACKAGES.get(name)
    if package and importlib.util.find_spec(package) is None and not _tensorboardx(name):
        raise ThawError(f"--logger {name} needs the {package} package: pip install 'thaw-transfer[{name}]'")


def _tensorboardx(name: str) -> bool:
    return name == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None


def lightning_logger(name: str, run_dir, plan: str):
    """The Lightning logger for one plan, or False (Lightning's "no logger")."""
    if name == "none":
        return False
    check_logger(name)
    from lightning.pytorch import loggers

    logs = run_dir / "logs"
    if name == "csv":
        return loggers.CSVLogger(logs, name="csv", version=plan)
    if name == "tensorboard":
        return loggers.TensorBoardLogger(logs, name="tensorboard", version=plan, default_hp_metric=False)
    if name == "mlflow":
        return loggers.MLFlowLogger(
            experiment_name="thaw", run_name=f"{run_dir.name}-{plan}", tracking_uri=f"file:{logs / 'mlruns'}"
        )
    return loggers.WandbLogger(project="thaw", name=f"{run_dir.name}-{plan}", save_dir=str(logs))


def logger_callbacks(name: str) -> list:
    """With a logger, Lightning's LearningRateMonitor logs every parameter group's LR each epoch."""
    if name == "none":
        return []
    from lightning.pytorch.callbacks import LearningRateMonitor

    return [LearningRateMonitor(logging_interval="epoch")]
