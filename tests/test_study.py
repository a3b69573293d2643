"""The study runner: cells on a local Ray give the serial study's numbers bitwise, a worker killed mid-cell
is retried and its cell resumes from its checkpoint, and bad executor input is one line."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_class_folder, tiny_flags
from safetensors.torch import load_file

from thaw.cli import main
from thaw.core.results import without_clock
from thaw.metrics.stats import interval
from thaw.studies.runner import Executor

KILLED = "two-phase-seed1"  # the cell whose first worker dies


def _fault() -> None:
    """Ray's worker setup hook (this module, imported in every worker): the first worker that reaches the
    second epoch of phase 2 of the KILLED cell records what its run folder holds, then dies (SIGKILL)."""
    marker = Path(os.environ["THAW_TEST_FAULT"])
    from thaw.core import run_folder
    from thaw.train import module

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        active = run_folder.active
        if self.phase == "phase2" and trainer.current_epoch == 1 and KILLED in str(active):
            if not marker.exists():
                phase1 = active / "phases" / "phase1.json"
                marker.write_text(json.dumps({"phase1_mtime": phase1.stat().st_mtime_ns}))
                os.kill(os.getpid(), signal.SIGKILL)

    module.EpochRecorder.on_train_batch_end = on_train_batch_end
    reopen = run_folder.RunFolder.reopen.__func__

    def logged(cls, path):
        with open(marker.with_suffix(".resumed"), "a") as log:
            log.write(f"{path}\n")
        return reopen(cls, path)

    run_folder.RunFolder.reopen = classmethod(logged)


def _cells(out: Path) -> dict:
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {(r["strategy"], r["seed"]): without_clock(r["summary"]) for r in runs}


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray of 2 CPUs whose workers import this module's fault hook (tests without Ray run without it)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need thaw-transfer[ray] (in the test extra)")
    tmp = tmp_path_factory.mktemp("ray")
    tests, src = Path(__file__).parent, Path(__file__).parents[1] / "src"
    env = {
        "PYTHONPATH": os.pathsep.join([str(src), str(tests), os.environ.get("PYTHONPATH", "")]),
        "THAW_TEST_FAULT": str(tmp / "killed.json"),
        "OMP_NUM_THREADS": "1",
    }
    os.environ.update(env)  # the workers inherit the driver's environment
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"worker_process_setup_hook": "test_study._fault", "env_vars": env},
    )
    yield tmp / "killed.json"
    ray.shutdown()


def test_compare_on_ray_equals_the_serial_one_and_a_killed_cell_resumes(local_ray, tmp_path, capsys):
    data = make_class_folder(tmp_path / "shapes", per_class=8)
    argv = [
        "compare",
        str(data),
        "--strategies",
        "two-phase,linear-probe",
        "--seeds",
        "2",
        *tiny_flags(),
        "--phase2-epochs",
        "2",
        "--cell-cpus",
        "1",
    ]
    assert main([*argv, "--out", str(tmp_path / "serial")]) == 0
    assert main([*argv, "--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    printed = capsys.readouterr().out
    assert "two-phase, seed 1: done" in printed
    serial, parallel = _cells(tmp_path / "serial"), _cells(tmp_path / "ray")
    assert len(serial) == 4 and serial == parallel  # every metric, epoch record and model sha256
    table = lambda out: (out / "table.md").read_text().split("\n\n")  # noqa: E731
    assert table(tmp_path / "serial")[1] == table(tmp_path / "ray")[1]  # the verdict

    # the killed cell: its first worker died in phase 2; Ray ran it again and the retry resumed it
    record = json.loads(local_ray.read_text())
    run = tmp_path / "ray" / "runs" / KILLED
    resumed = local_ray.with_suffix(".resumed").read_text().split()
    assert [Path(p).name for p in resumed] == [f"{KILLED}.incomplete"]
    assert (run / "phases" / "phase1.json").stat().st_mtime_ns == record["phase1_mtime"]  # not retrained

    # an oracle outside the study runner: the killed-and-resumed Ray cell is the plain `thaw fit` of its
    # seed, tensor for tensor, and its summary's test metrics are that run's
    alone = tmp_path / "alone"
    flags = [*tiny_flags(), "--phase2-epochs", "2", "--seed", "1", "--quiet"]
    assert main(["fit", str(data), *flags, "--out", str(alone)]) == 0
    cell, direct = load_file(str(run / "model.safetensors")), load_file(str(alone / "model.safetensors"))
    assert cell.keys() == direct.keys() and all(torch.equal(cell[k], direct[k]) for k in cell)
    summary = lambda path: json.loads((path / "summary.json").read_text())["phases"]  # noqa: E731
    for phase in ("phase1", "phase2"):
        assert summary(run)[phase]["test"] == summary(alone)[phase]["test"]


def test_a_two_process_cell_holds_two_cpus_and_runs_under_lightnings_launcher(local_ray, tmp_path):
    """A cell with --devices 2 (gloo on the CPU) as one Ray task of 2 CPUs: its own thaw process, whose
    second rank Lightning starts; the run folder is the study's, and the summary says 2 processes."""
    data = make_class_folder(tmp_path / "shapes", per_class=8)
    out = tmp_path / "ddp"
    argv = ["compare", str(data), "--strategies", "two-phase", "--seeds", "1", *tiny_flags(batch=4)]
    argv += ["--phase2-epochs", "1", "--accelerator", "cpu", "--devices", "2", "--dist-strategy", "ddp"]
    assert main([*argv, "--executor", "ray", "--cell-cpus", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "runs" / "two-phase-seed0" / "summary.json").read_text())
    assert summary["hardware"]["processes"] == 2
    assert (out / "table.md").is_file()


def test_bad_executor_input_is_one_line(tmp_path, capsys, monkeypatch):
    data = make_class_folder(tmp_path / "shapes", per_class=4)
    base = ["compare", str(data), "--seeds", "1", *tiny_flags()]
    cases = [
        (["--executor", "ray", "--address", "127.0.0.1:9"], "no Ray head answers there"),
        (["--executor", "ray", "--address", "nowhere"], "give auto or HOST:PORT"),
        (["--address", "127.0.0.1:9"], "give it with --executor ray"),
        (["--executor", "ray", "--cell-cpus", "0"], "--cell-cpus 0 must be at least 1"),
    ]
    for i, (flags, message) in enumerate(cases):
        assert main([*base, "--out", str(tmp_path / f"c{i}"), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / f"c{i}").exists()  # refused before the study folder
    monkeypatch.setitem(sys.modules, "ray", None)  # as if thaw-transfer[ray] were not installed
    for argv in (
        [*base, "--out", str(tmp_path / "x"), "--executor", "ray"],
        [
            "curve",
            str(data),
            *tiny_flags(),
            "--budgets",
            "1",
            "--out",
            str(tmp_path / "y"),
            "--executor",
            "ray",
        ],
        ["fit", str(data), *tiny_flags(), "--folds", "2", "--out", str(tmp_path / "z"), "--executor", "ray"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "install thaw-transfer[ray]" in err and len(err.splitlines()) == 1, err
    assert main(["fit", str(data), "--executor", "ray", "--out", str(tmp_path / "w")]) == 2
    assert "--folds K or --strategy auto" in capsys.readouterr().err


def test_interval_and_executor_defaults():
    i = interval([0.8, 0.9, 1.0, float("nan"), None])
    assert (i.mean, i.n) == (pytest.approx(0.9), 3) and i.sd == pytest.approx(0.1)
    assert i.low == pytest.approx(0.9 - 4.303 * 0.1 / 3**0.5, 1e-3)
    assert interval([0.5]).sd == 0.0 and interval([]).n == 0
    assert (
        Executor().threads is None and Executor("ray").threads == 1 and Executor("ray", cpus=2).threads == 2
    )
