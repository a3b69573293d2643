"""thaw in a notebook: ``thaw.fit("folder/", phase2_epochs=2)`` with the CLI's flag names (the same
resolved config as ``thaw fit folder --phase2-epochs 2``), a phase block that keeps its other defaults,
``thaw.load(run).predict(...)`` as a pandas DataFrame, and a live progress bar in a Jupyter kernel."""

from __future__ import annotations

import sys
import types

import pandas as pd
import pytest
import yaml
from conftest import make_class_folder
from PIL import Image

import thaw
from thaw.cli import main
from thaw.core.config import RunConfig, keywords, settings
from thaw.core.errors import ThawError
from thaw.core.run_log import Reporter, config_digest, in_notebook, log_format

TINY = dict(model="mobilenet_v3_small", weights="none", image_size=32, batch_size=8)
TINY_FLAGS = ["--model", "mobilenet_v3_small", "--weights", "none", "--image-size", "32", "--batch-size", "8"]


def cli_config(capsys, *args: str) -> RunConfig:
    assert main(["fit", *args, "--print-config"]) == 0
    return RunConfig.from_dict(yaml.safe_load(capsys.readouterr().out))


def test_keywords_resolve_to_the_config_the_flags_give(capsys):
    """Same settings, same digest: the keywords and the flags share one mapping and one resolution."""
    assert config_digest(thaw.configure("shapes/", phase2_epochs=2)) == config_digest(
        cli_config(capsys, "shapes/", "--phase2-epochs", "2")
    )
    given = dict(strategy="lp-ft", patience=5, phase2_patience=2, hflip=False, workers=0, phase1="online")
    flags = [
        "--strategy",
        "lp-ft",
        "--patience",
        "5",
        "--phase2-patience",
        "2",
        "--no-hflip",
        "--workers",
        "0",
    ]
    from_keywords = thaw.configure("shapes/", **TINY, **given)
    from_flags = cli_config(capsys, "shapes/", *TINY_FLAGS, *flags, "--phase1", "online")
    assert config_digest(from_keywords) == config_digest(from_flags)
    assert (from_keywords.phase1.patience, from_keywords.phase2.patience) == (5, 2)
    assert from_keywords.phase2.warmup_epochs == 1.0  # phase 2's own default, kept


def test_every_flag_of_thaw_fit_is_a_keyword():
    from thaw.cli import parser

    fit = next(a for a in parser()._actions if hasattr(a, "choices") and a.choices and "fit" in a.choices)
    config_flags = {
        o
        for a in fit.choices["fit"]._actions
        for o in a.option_strings
        if a.dest in {key for _, key, _, _ in settings()} | {"patience"}
    }
    config_flags -= {"--plans"}  # a file of plans; thaw.fit takes plans= as PhasePlans
    config_flags -= {o for o in config_flags if o.startswith("--no-")}  # False as a keyword
    assert {o.removeprefix("--").replace("-", "_") for o in config_flags} == set(keywords())


def test_a_phase_block_keeps_the_phase_defaults_it_does_not_set(tmp_path):
    """``PhaseConfig(epochs=2)`` used to reset phase 2's warmup to 0 (and its schedule): now the settings it
    leaves out are the phase's own, in Python and in a YAML block alike."""
    by_class = thaw.RunConfig(phase2=thaw.PhaseConfig(epochs=2))
    assert by_class == thaw.configure(phase2_epochs=2)
    assert by_class.phase2.warmup_epochs == 1.0 and by_class.phase2.schedule == "cosine"
    assert thaw.RunConfig(phase1=thaw.PhaseConfig(epochs=3)).phase1.schedule == "constant"
    path = tmp_path / "c.yaml"
    path.write_text("phase2:\n  epochs: 2\n")
    assert RunConfig.from_yaml(path) == by_class


def test_unknown_or_invalid_keywords_are_one_line_naming_the_fix():
    with pytest.raises(ThawError, match="unknown setting phase2_epoch=3: did you mean phase2_epochs?"):
        thaw.configure("shapes/", phase2_epoch=3)
    with pytest.raises(ThawError, match="phase1='fast' is not one of cached, online"):
        thaw.configure("shapes/", phase1="fast")
    with pytest.raises(ThawError, match="--phase2-epochs -1 must be 0"):
        thaw.fit("shapes/", phase2_epochs=-1)
    with pytest.raises(ThawError, match="batch_size = 'a' must be of type int"):
        thaw.fit("shapes/", batch_size="a")
    with pytest.raises(ThawError, match="takes the images .* or a RunConfig, not dict"):
        thaw.fit({"data": "shapes/"})
    assert thaw.fit.__doc__ and "phase2_epochs" in thaw.fit.__doc__


def test_fit_by_keywords_then_predict_a_dataframe(tmp_path, capsys):
    data = make_class_folder(tmp_path / "shapes")
    out = tmp_path / "run"
    result = thaw.fit(str(data), **TINY, phase1_epochs=2, phase2_epochs=1, out=str(out), quiet=True)
    written = RunConfig.from_yaml(out / "config.yaml")
    capsys.readouterr()  # the result table, printed with quiet too
    flags = cli_config(
        capsys, str(data), *TINY_FLAGS, "--phase1-epochs", "2", "--phase2-epochs", "1", "--out", str(out)
    )
    assert config_digest(written) == config_digest(flags)  # what the CLI would have run

    predictor = thaw.load(result.path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    table = predictor.predict([data / "red", bad])
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["path", "prediction", "confidence", "p_blue", "p_red", "error"]
    assert len(table) == 9 and table["error"].notna().sum() == 1
    assert table.loc[table["path"] == str(bad), "prediction"].isna().all()
    good = table[table["error"].isna()]
    assert ((good["p_blue"] + good["p_red"] - 1).abs() < 1e-5).all()
    assert set(good["prediction"]) <= {"red", "blue"}

    images = [Image.open(f).convert("RGB") for f in sorted((data / "red").iterdir())[:3]]
    in_memory = predictor.predict(images)
    assert in_memory["path"].isna().all() and len(in_memory) == 3
    from_files = predictor.predict(sorted((data / "red").iterdir())[:3])
    assert (in_memory["p_red"] - from_files["p_red"]).abs().max() < 1e-4  # the same preprocessing
    one = predictor.predict(str(sorted((data / "red").iterdir())[0]))
    assert len(one) == 1
    with_tta = predictor.predict(images, tta=True)
    assert with_tta.shape == in_memory.shape
    assert (with_tta["p_red"] - in_memory["p_red"]).abs().max() > 0  # TTA averaged other views
    paths = [str(f) for f in sorted((data / "red").iterdir())[:3]]
    by_files, _ = predictor.predict_files(paths, tta=True)  # TTA the same on every method
    assert [p.probabilities["red"] for p in by_files] == pytest.approx(list(with_tta["p_red"]), abs=1e-4)
    with pytest.raises(ThawError, match="not both"):
        predictor.predict([images[0], paths[0]])


def test_the_progress_bar_shows_in_a_terminal_and_a_notebook_not_in_a_pipe(monkeypatch):
    class ZMQInteractiveShell:  # the class name Jupyter's kernel gives its shell
        pass

    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    assert not in_notebook() and not Reporter().progress  # a pipe: the epoch lines alone
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: ZMQInteractiveShell()
    monkeypatch.setitem(sys.modules, "IPython", fake)
    assert in_notebook() and Reporter().progress
    assert not Reporter(quiet=True).progress
    with log_format("json"):
        assert not Reporter().progress  # json: nothing but events on stdout
    fake.get_ipython = lambda: None  # IPython imported, no kernel: a plain script
    assert not in_notebook()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert Reporter().progress
