"""A run killed with SIGKILL at any point and resumed ends exactly where an uninterrupted one does."""

import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_flags
from safetensors.torch import load_file
from zygote import run_thaw

from thaw.cli import main
from thaw.core.config import ModelConfig
from thaw.core.results import without_clock
from thaw.models import build_classifier

ARGS = [
    *tiny_flags(),
    "--lr",
    "0.01",
    "--phase1-epochs",
    "3",
    "--phase2-epochs",
    "3",
    "--patience",
    "5",
    "--unfreeze",
    "2",
    "--phase1",
    "online",
    "--quiet",
]
# The same run, learning: with AdaBN a random-init network's batch norms get statistics of these images, so
# its features are not near zero (without it the loss stays at log 2, and phase 2 moves 7 of 244 tensors)
LEARNING = [*ARGS[:-1], "--adabn", "--quiet"]

# Runs `thaw fit` in a subprocess that kills itself (SIGKILL: no cleanup, no atexit) at one point.
KILLER = """
import os, signal, sys
from thaw.train import module
from thaw.core import run_folder
where, phase, epoch, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

def on_train_batch_end(self, trainer, pl_module, outputs, b, batch_idx):
    if self.phase == phase and trainer.current_epoch + 1 == epoch and batch_idx == batch:
        die()

if where == "batch":
    module.EpochRecorder.on_train_batch_end = on_train_batch_end
elif where == "save_phase":  # the phase is trained and its last checkpoint saved, its result not yet
    original = run_folder.RunFolder.save_phase
    run_folder.RunFolder.save_phase = lambda self, r: die() if r.name == phase else original(self, r)
elif where == "commit":  # every file written, the folder not yet renamed
    run_folder.RunFolder.commit = die
elif where == "features":  # phase 1 cached: killed while writing the feature cache
    from thaw.data import features
    original_compute = features.compute
    def compute(backbone, dataset, keys, folder, *args, **kwargs):
        kwargs["progress"] = lambda done, total: die() if done >= 8 else None
        return original_compute(backbone, dataset, keys, folder, *args, **kwargs)
    features.compute = compute
from thaw.cli import main
sys.exit(main(sys.argv[5:]))
"""

KILL_POINTS = {
    "phase1, mid-epoch 2": ("batch", "phase1", 2, 1),
    "phase1, trained, result not saved": ("save_phase", "phase1", 0, 0),
    "phase2, mid-epoch 2": ("batch", "phase2", 2, 0),
    "before the rename": ("commit", "-", 0, 0),
    "phase1 cached, writing features": ("features", "-", 0, 0),
    "gradual, second stage, mid-epoch 2": ("batch", "thaw2", 2, 0),
}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from conftest import make_class_folder

    root = tmp_path_factory.mktemp("resume")
    data = make_class_folder(root / "shapes", per_class=14)
    out = root / "whole"
    assert main(["fit", str(data), *ARGS, "--out", str(out)]) == 0
    return data, out


@pytest.fixture(scope="module")
def learning(uninterrupted):
    data, whole = uninterrupted
    out = whole.with_name("learning")
    assert main(["fit", str(data), *LEARNING, "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert min(float(r["val_loss"]) for r in rows) < 0.6  # it learns: a resume has something to get wrong
    return data, out


def outcome(run: Path) -> dict:
    """Everything a run measured, less every wall-clock field (results.without_clock: each ``seconds``, each
    ``*_seconds``, throughput, version) and whether a cached prefix was already there."""
    summary = without_clock(json.loads((run / "summary.json").read_text()))
    for phase in summary["phases"].values():
        phase.get("features", {}).pop("from_cache", None)
        for row in phase.pop("epochs"):
            assert row["phase"] == phase["name"]
    rows = [without_clock(row) for row in csv.DictReader((run / "metrics.csv").open())]
    return {"summary": summary, "rows": rows}


def kill_and_resume(data, args, out, point, env=None):
    where, phase, epoch, batch = KILL_POINTS[point]
    command = [where, phase, str(epoch), str(batch), "fit", str(data), *args, "--out", str(out)]
    killed = run_thaw(command, code=KILLER, env=env)  # its own process, forked from a preloaded one
    assert killed.returncode == -9, killed.stderr[-2000:]
    staging = out.with_name(out.name + ".incomplete")
    assert staging.is_dir() and not out.exists()
    assert not list(staging.rglob("*.tmp")) or where == "batch"  # a kill mid-write may leave a temp file
    # a new run at the same place refuses, naming the way out, and deletes nothing
    assert main(["fit", str(data), *args, "--out", str(out)]) == 2
    assert staging.is_dir()
    assert main(["resume", str(staging), "--quiet"]) == 0
    assert out.is_dir() and not staging.exists()


def same_model(a: Path, b: Path) -> bool:
    ours, theirs = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.mark.parametrize("point", [p for p in KILL_POINTS if p.startswith(("phase1, ", "phase2", "before"))])
def test_killed_and_resumed_run_equals_uninterrupted(learning, tmp_path, point):
    data, whole = learning
    kill_and_resume(data, LEARNING, tmp_path / "run", point)
    assert outcome(tmp_path / "run") == outcome(whole)
    assert same_model(tmp_path / "run", whole)


def test_killed_while_caching_features_and_resumed(uninterrupted, tmp_path, monkeypatch):
    """A half-written feature cache is never used: the resumed run rebuilds it and ends like a whole run."""
    data, _ = uninterrupted
    home = tmp_path / "home"
    monkeypatch.setenv("THAW_HOME", str(home))
    args = [*ARGS[:-3], "--phase1", "cached", "--quiet"]
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "whole")]) == 0
    import shutil

    shutil.rmtree(home)  # an empty cache again: the killed run must write it
    import os

    kill_and_resume(data, args, tmp_path / "run", "phase1 cached, writing features", {**os.environ})
    assert outcome(tmp_path / "run") == outcome(tmp_path / "whole")
    assert same_model(tmp_path / "run", tmp_path / "whole")
    folders = list((home / "cache" / "features").iterdir())
    assert all((f / "meta.json").is_file() for f in folders)  # no half-written cache left behind


def test_resume_keeps_frozen_groups_frozen(uninterrupted):
    """Lightning's BackboneFinetuning re-freezes or loses frozen state on resume (its #21901): here the
    groups phase 2 never unfroze are bitwise the initial weights, batch-norm statistics included."""
    _, whole = uninterrupted
    L.seed_everything(0, verbose=False)
    initial = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, ["blue", "red"], 32)
    final = load_file(str(whole / "model.safetensors"))
    frozen = {f"backbone.{n}" for group in initial.layer_groups[:-2] for n in group}
    state = initial.state_dict()
    assert frozen and all(torch.equal(final[k], state[k]) for k in frozen)
    trainable = {f"backbone.{n}" for n in initial.layer_groups[-1]}
    assert any(not torch.equal(final[k], state[k]) for k in trainable)
    # batch norm under the default policy (matched: in train mode in the groups phase 2 trains, in eval
    # mode in the others): each buffer (running mean, variance, batches tracked) of each BN layer is saved,
    # those of the frozen groups are the initial ones, and those of the trained groups moved
    bn = [name for name, m in initial.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = ("running_mean", "running_var", "num_batches_tracked")
    buffers = {f"backbone.{m}.{b}" for m in bn for b in stats}
    assert bn and buffers <= final.keys()  # so same_model, which every resume test uses, compares them too
    changed = {k for k in buffers if not torch.equal(final[k], state[k])}
    trained = tuple(f"backbone.{n.rpartition('.')[0]}." for group in initial.layer_groups[-2:] for n in group)
    assert changed and all(k.startswith(trained) for k in changed), sorted(changed)


def test_tracked_statistics_killed_mid_phase_and_resumed_equal_uninterrupted(uninterrupted, tmp_path):
    """``--bn-policy tracked``: a resumed phase takes its reference where it restarts, from statistics
    already corrected, and ends where a whole run does: every metric and every weight bitwise, the corrected
    statistics to float rounding (the correction is transitive in exact arithmetic; a running mean of 7e-13
    came back 3e-21 apart). The last 2 groups train: the batch norms below keep the initial statistics,
    those above moved."""
    data, _ = uninterrupted
    args = [*ARGS[:-1], "--bn-policy", "tracked", "--quiet"]
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "whole")]) == 0
    kill_and_resume(data, args, tmp_path / "run", "phase2, mid-epoch 2")
    resumed, whole = outcome(tmp_path / "run"), outcome(tmp_path / "whole")
    for one in (resumed, whole):
        one["summary"].pop("model_sha256")
    assert resumed == whole
    ours = load_file(str(tmp_path / "run" / "model.safetensors"))
    theirs = load_file(str(tmp_path / "whole" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for k, t in theirs.items():
        statistic = k.endswith(("running_mean", "running_var"))
        assert torch.allclose(ours[k], t, rtol=1e-6, atol=0.0) if statistic else torch.equal(ours[k], t), k
    L.seed_everything(0, verbose=False)
    initial = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, ["blue", "red"], 32)
    state, final = initial.state_dict(), load_file(str(tmp_path / "whole" / "model.safetensors"))
    below = {n.rsplit(".", 1)[0] for group in initial.layer_groups[:-2] for n in group}
    means = [k for k in final if k.startswith("backbone.") and k.endswith("running_mean")]
    moved = {k for k in means if not torch.equal(final[k], state[k])}
    assert moved and all(k.removeprefix("backbone.").rsplit(".", 1)[0] not in below for k in moved)


def test_resume_refuses_a_finished_or_missing_run(uninterrupted, tmp_path, capsys):
    _, whole = uninterrupted
    assert main(["resume", str(whole)]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main(["resume", str(tmp_path / "nope")]) == 2
    assert "no interrupted run" in capsys.readouterr().err


@pytest.mark.slow
def test_gradual_unfreezing_killed_mid_stage_resumes_exactly(uninterrupted, tmp_path):
    """Gradual unfreezing is a plan per stage (top 1 group, top 2, then all), each with its own optimizer
    over exactly the groups thawed so far. Killed in the middle of the second stage and resumed, the run
    ends bitwise where an uninterrupted one does, and the groups that stage kept frozen stayed frozen."""
    data, _ = uninterrupted
    args = [
        *tiny_flags(),
        "--lr",
        "0.01",
        "--phase1",
        "online",
        "--phase1-epochs",
        "1",
        "--phase2-epochs",
        "1",
    ]
    args += ["--strategy", "gradual", "--gradual-every", "2", "--gradual-groups", "2", "--quiet"]
    assert main(["fit", str(data), *args, "--out", str(tmp_path / "whole")]) == 0
    kill_and_resume(data, args, tmp_path / "run", "gradual, second stage, mid-epoch 2")
    assert outcome(tmp_path / "run") == outcome(tmp_path / "whole")
    assert same_model(tmp_path / "run", tmp_path / "whole")
    assert list(json.loads((tmp_path / "run" / "summary.json").read_text())["phases"]) == [
        "phase1",
        "thaw1",
        "thaw2",
        "thaw-all",
    ]
    L.seed_everything(0, verbose=False)
    initial = build_classifier(ModelConfig(name="mobilenet_v3_small", weights="none"), 2, ["blue", "red"], 32)
    stage = load_file(str(tmp_path / "run" / "checkpoints" / "thaw2.safetensors"))
    state = initial.state_dict()
    frozen = {f"backbone.{n}" for group in initial.layer_groups[:-2] for n in group}
    thawed = {f"backbone.{n}" for group in initial.layer_groups[-2:] for n in group}
    assert all(torch.equal(stage[k], state[k]) for k in frozen)
    assert any(not torch.equal(stage[k], state[k]) for k in thawed)
