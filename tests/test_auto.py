"""--strategy auto: successive halving over candidate recipes within a time budget; the default kept unless a
challenger beats it beyond noise; a normal run folder with the screening record; resumable after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_class_folder, tiny_config, tiny_flags
from zygote import run_thaw

import thaw
from thaw.cli import main
from thaw.core.config import override
from thaw.studies import auto
from thaw.studies.auto import challenger_wins, ladder

# a short list keeps the tests fast: the incumbent and two challengers, one without phase 2
FEW = (
    {"name": "two-phase", "overrides": {"strategy": "two-phase"}},
    {"name": "lp-ft", "overrides": {"strategy": "lp-ft"}},
    {"name": "linear-probe", "overrides": {"strategy": "linear-probe"}},
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_class_folder(tmp_path_factory.mktemp("auto") / "shapes", per_class=8)


def _probs(correct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Two-class probabilities that are right (0.8 on the label) where ``correct``, wrong elsewhere."""
    right = np.where(correct, labels, 1 - labels)
    probs = np.full((len(labels), 2), 0.2)
    probs[np.arange(len(labels)), right] = 0.8
    return probs


def test_decision_takes_a_clear_win_and_keeps_the_default_on_a_tie():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=100)
    incumbent = _probs(rng.random(100) < 0.6, labels)
    better = _probs(np.ones(100, dtype=bool), labels)
    clear = challenger_wins(labels, incumbent, better, "accuracy", challengers=7)
    assert clear["wins"] and clear["difference"] > 0.3 and clear["lower_bound"] > 0
    assert clear["confidence"] == pytest.approx(1 - 0.10 / 7)
    tie = challenger_wins(labels, incumbent, incumbent.copy(), "accuracy", challengers=7)
    assert not tie["wins"] and tie["difference"] == 0 and tie["lower_bound"] == 0

    # a 15-point lead (4 images gained, 1 lost of every 20) is noise on 20 images, not on 600
    def masks(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        i, y = np.arange(n) % 20, np.array([0, 1] * (n // 2))
        incumbent_right, challenger_right = (i >= 4) & (i != 19) | (i == 0), i != 0
        return y, _probs(incumbent_right, y), _probs(challenger_right, y)

    few, many = challenger_wins(*masks(20)), challenger_wins(*masks(600), challengers=7)
    assert few["difference"] == pytest.approx(0.15) and not few["wins"] and many["wins"]
    # picking the best of more challengers raises the bar (Bonferroni): on 40 images the lead wins
    # against the default alone, not as the best of 7
    one, seven = challenger_wins(*masks(40), challengers=1), challenger_wins(*masks(40), challengers=7)
    assert one["wins"] and not seven["wins"] and seven["lower_bound"] < one["lower_bound"]
    # AUC, by resampling the images of both models together
    scores = challenger_wins(labels, incumbent, better, "auc", challengers=3)
    assert scores["metric"] == "auc" and scores["wins"]


def test_ladder_doubles_to_the_full_budget_and_candidates_adapt_to_the_config(tmp_path):
    assert ladder(10, 7) == [2, 3, 5, 10]
    assert ladder(10, 1) == [10] and ladder(1, 6) == [1, 1, 1, 1]
    assert ladder(4, 15) == [2, 2, 2, 2, 4]  # never a one-epoch screen: that is the opening
    config = tiny_config(tmp_path / "d", tmp_path / "o", strategy="auto", lr_ratio=100.0)
    kept, left = auto.candidates(config)
    names = [c.name for c in kept]
    # the user's batch-norm policy (the default, matched) is the incumbent's; the others are challengers
    assert kept[0].config.bn_policy == "matched" and {"bn-frozen", "bn-tracked"} <= set(names)
    assert next(x["why"] for x in left if x["candidate"] == "bn-matched") == "the same recipe as two-phase"
    assert names[0] == "two-phase" and "lr-ratio-100" not in names
    assert next(x["why"] for x in left if x["candidate"] == "lr-ratio-100") == "the same recipe as two-phase"
    by_name = {c.name: c for c in kept}
    assert by_name["linear-probe"].scaled == () and by_name["head-own-lr"].scaled == ("phase2",)
    assert by_name["finetune-low-lr"].scaled == ("finetune",)
    short = by_name["head-own-lr"].at(1, tmp_path / "r", tmp_path / "split.csv")
    assert short.phase2.epochs == 1 and short.phase2_head_lr == "lr" and short.time_budget is None
    assert short.phase2.warmup_epochs == pytest.approx(config.phase2.warmup_epochs / config.phase2.epochs)
    assert by_name["augment-none"].config.data.augment == "none" and by_name["augment-light"].scaled
    # a policy the user already gave is the incumbent's: that candidate is left out
    _, left = auto.candidates(override(config, {"data.augment": "light"}))
    assert {"candidate": "augment-light", "why": "the same recipe as two-phase"}.items() <= left[-1].items()
    # matched trains batch norm on batches of 8 or more: on fewer the run holds it (frozen, as the
    # preflight does), so bn-frozen is the incumbent's recipe and bn-matched is left out with why
    kept, left = auto.candidates(override(config, {"data.batch_size": 1}))
    names = [c.name for c in kept]
    assert kept[0].config.bn_policy == "frozen" and "bn-tracked" in names
    assert "bn-matched" not in names and "bn-frozen" not in names
    assert "on batches of 8 or more" in next(x["why"] for x in left if x["candidate"] == "bn-matched")
    assert next(x["why"] for x in left if x["candidate"] == "bn-frozen") == "the same recipe as two-phase"
    # another policy given: matched is a challenger again
    kept, _ = auto.candidates(override(config, {"bn_policy": "frozen"}))
    assert "bn-matched" in [c.name for c in kept] and "bn-frozen" not in [c.name for c in kept]


def test_auto_within_its_budget_leaves_a_complete_run_folder(data, tmp_path, capsys):
    out = tmp_path / "auto"
    config = tiny_config(data, out, strategy="auto", time_budget=300.0)
    result = auto.fit_auto(config, listed=FEW)
    printed = capsys.readouterr().out
    assert result.path == out and not out.with_name("auto.incomplete").exists()
    for name in (
        "model.safetensors",
        "summary.json",
        "report.html",
        "metrics.csv",
        "config.yaml",
        "split.csv",
    ):
        assert (out / name).is_file(), name
    record = json.loads((out / "summary.json").read_text())["auto"]
    assert record["time_used_s"] <= record["budget_s"] == 300
    assert record["winner"] in {c["name"] for c in FEW} and record["reason"].startswith("auto: ")
    table = record["table"]
    assert table[0]["candidate"] == "two-phase" and table[0]["rung"] == "default"
    screened = {r["candidate"] for r in table if r["rung"] == 0}
    assert screened == {"lp-ft", "linear-probe"}
    for row in table:
        if row["path"]:
            assert (out / row["path"] / "summary.json").is_file() and row["seconds"] > 0
            assert row["val_accuracy"] is not None and row["status"]
            assert not (out / row["path"] / "checkpoints").exists()  # pruned: the model file stays
    assert record["decision"]["challengers"] == 2 and record["decision"]["images"] >= 2
    summary = thaw.RunSummary.read(out)
    assert summary.auto == record and summary.strategy in {"two-phase", "lp-ft", "linear-probe"}
    chosen = thaw.RunConfig.from_yaml(out / "config.yaml").validate()  # the chosen recipe, rerunnable
    assert chosen.strategy != "auto" and chosen.out == str(out) and chosen.data.split_file is None
    page = (out / "report.html").read_text()
    assert "Strategy search (--strategy auto)" in page and "linear-probe" in page
    assert "rank 1 of" in printed and record["reason"] in printed
    assert thaw.load(out).predict_paths([next(data.rglob("*.png"))])[0].label in ("red", "blue")


def test_the_default_budget_prunes_and_holds_on_the_wall_clock(data, tmp_path):
    """No --time-budget: twice the default's own run, which cannot fit both challengers' rung 0 after the
    default; the search prunes, and the wall clock (not the search's own), finishing included, keeps to it."""
    out = tmp_path / "auto"
    start = time.monotonic()
    auto.fit_auto(tiny_config(data, out, strategy="auto"), listed=FEW)
    wall = time.monotonic() - start
    record = json.loads((out / "summary.json").read_text())["auto"]
    assert record["budget_rule"].startswith("2x the default recipe's run")
    assert [r["candidate"] for r in record["table"] if r["status"] == "not run"]  # pruned for time
    # the budget bounds the search; the run folder is made after it (links, the report): a few seconds
    assert wall <= record["budget_s"] * 1.1 + 5, (wall, record["budget_s"])
    assert record["time_used_s"] <= wall


def test_a_tight_budget_keeps_the_default_says_why_and_thaw_resume_finishes(
    data, tmp_path, monkeypatch, capsys
):
    out, staged = tmp_path / "tight", tmp_path / "tight.incomplete"
    argv = ["fit", str(data), *tiny_flags(), "--strategy", "auto", "--time-budget", "1", "--out", str(out)]
    finish = auto._finish

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(auto, "_finish", interrupted)  # Ctrl-C after the screening, before the folder is made
    assert main(argv) == 130
    assert (
        f"continue it with `thaw resume {staged}`" in capsys.readouterr().err
    )  # the search, not a run in it
    monkeypatch.setattr(auto, "_finish", finish)
    assert main(["resume", str(staged)]) == 0
    printed = capsys.readouterr().out
    assert "auto: kept two-phase (the default) because no challenger fitted in the 1 s budget" in printed
    record = json.loads((out / "summary.json").read_text())["auto"]
    assert record["winner"] == "two-phase" and record["budget_s"] == 1
    skipped = [r for r in record["table"] if r["status"] == "not run"]
    assert skipped and all("budget left" in r["why"] for r in skipped)
    assert [p.name for p in (out / "auto").iterdir() if p.is_dir()] == ["incumbent"]


THREE = ("two-phase", "head-own-lr", "linear-probe")  # the incumbent and two challengers, one without phase 2
KILLED = f"""
import os, signal, sys
from thaw.studies import auto
from thaw.train import module
auto.CANDIDATES = tuple(c for c in auto.CANDIDATES if c["name"] in {THREE!r})

def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
    if "rung0" in str(trainer.default_root_dir) and self.phase == "phase2":
        os.kill(os.getpid(), signal.SIGKILL)  # head-own-lr's phase 2, mid-epoch: rung 0 half done

module.EpochRecorder.on_train_batch_end = on_train_batch_end
from thaw.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow  # two processes of a search: about 30 s on 2 cores
def test_killed_mid_screening_then_the_same_command_resumes_and_finishes(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "killed"
    argv = ["fit", str(data), *tiny_flags(), "--phase2-epochs", "2", "--strategy", "auto", "--out", str(out)]
    argv += ["--time-budget", "300", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_thaw(argv, code=KILLED, env=env)  # forked from a preloaded process (tests/zygote.py)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    staged = out.with_name("killed.incomplete")
    assert (staged / "auto" / "incumbent" / "summary.json").is_file()
    assert (staged / "auto" / "rung0" / "head-own-lr.incomplete").is_dir()  # interrupted, not finished
    incumbent = (staged / "auto" / "incumbent" / "model.safetensors").stat().st_mtime_ns

    from thaw.use import run as recipe

    resumed = []
    real = recipe.resume
    monkeypatch.setattr(recipe, "resume", lambda path, quiet=False: resumed.append(path) or real(path, quiet))
    monkeypatch.setattr(auto, "CANDIDATES", tuple(c for c in auto.CANDIDATES if c["name"] in THREE))
    assert main(argv) == 0
    assert [Path(p).name for p in resumed] == ["head-own-lr.incomplete"]  # the interrupted run went on
    assert (out / "auto" / "incumbent" / "model.safetensors").stat().st_mtime_ns == incumbent  # not rerun
    record = json.loads((out / "summary.json").read_text())["auto"]
    assert {r["candidate"] for r in record["table"] if r["rung"] == 0} == {"head-own-lr", "linear-probe"}
    assert "auto: " in capsys.readouterr().out

    # the same command once more: the run folder exists and is never overwritten
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_bad_input_is_one_line(data, tmp_path, capsys):
    base = ["fit", str(data), *tiny_flags(), "--out", str(tmp_path / "x")]
    cases = [
        (
            ["--strategy", "auto", "--time-budget", "-5"],
            "--time-budget -5.0 must be a number of seconds above 0",
        ),
        (["--time-budget", "60"], "--time-budget is the search budget of --strategy auto"),
        (["--strategy", "auto", "--lr", "auto"], "--strategy auto takes numbers for lr"),
        (["--strategy", "auto", "--folds", "3"], "--strategy auto is a search over strategies"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["compare", str(data), "--strategy", "auto", "--out", str(tmp_path / "c")]) == 2
    assert "not --strategy" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # compare has no --time-budget: it is auto's, not compare's
        main(["compare", str(data), "--time-budget", "60", "--out", str(tmp_path / "c")])
    assert refused.value.code == 2 and "unrecognized arguments: --time-budget" in capsys.readouterr().err


def test_a_different_command_into_the_same_search_is_refused(data, tmp_path, capsys):
    out = tmp_path / "search"
    config = tiny_config(data, out, strategy="auto", time_budget=1.0)
    staged = out.with_name("search.incomplete")
    (staged / "auto").mkdir(parents=True)
    names = [c["name"] for c in auto.CANDIDATES]
    spec = {"command": "thaw fit --strategy auto", "candidates": names, "config": config.to_dict()}
    (staged / "auto" / "auto.json").write_text(json.dumps(spec))
    with pytest.raises(thaw.ThawError, match="different command"):
        auto.fit_auto(override(config, {"seed": 1}))
    assert auto.is_auto(out) and auto.is_auto(staged) and not auto.is_auto(tmp_path)


def test_auto_knows_when_the_check_changed_the_policy():
    """Then auto screens ``augment-none`` first, whatever the budget (issue 25)."""
    from types import SimpleNamespace

    changed = {"setting": "auto", "started_from": "crop 0.5-1, hflip", "chosen": "crop 0.9-1, hflip"}
    kept = {**changed, "chosen": "crop 0.5-1, hflip"}
    assert auto.policy_changed(SimpleNamespace(augment=changed))
    assert not auto.policy_changed(SimpleNamespace(augment=kept))
    assert not auto.policy_changed(SimpleNamespace(augment={"setting": "none", "chosen": "none"}))
