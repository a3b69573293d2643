import pytest
import yaml

from thaw.core.config import RunConfig, override, unfreeze_groups
from thaw.core.errors import ThawError


def test_yaml_round_trip(tmp_path):
    config = override(RunConfig(), {"data.path": "x", "lr": 3e-4, "phase2.epochs": 2, "unfreeze": "2"})
    path = tmp_path / "config.yaml"
    path.write_text(config.to_yaml())
    assert RunConfig.from_yaml(path) == config


def test_override_skips_none_and_keeps_others():
    config = override(RunConfig(), {"lr": None, "seed": 7})
    assert config.lr == RunConfig().lr and config.seed == 7


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": 0.0}, "--lr"),
        ({"lr_ratio": 0.5}, "--lr-ratio"),
        ({"unfreeze": "some"}, "--unfreeze"),
        ({"bn_policy": "magic"}, "frozen, tracked, train, matched, fastai"),
        ({"phase1.epochs": 0, "phase2.epochs": 0}, "nothing to train"),
        ({"data.image_size": 4}, "--image-size"),
        ({"data.val_fraction": 0.6, "data.test_fraction": 0.5}, "sum < 1"),
    ],
)
def test_bad_values_name_the_setting(changes, message):
    with pytest.raises(ThawError, match=message):
        override(RunConfig(), changes).validate()


def test_unknown_and_mistyped_yaml_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("phase1:\n  epoch: 3\n")
    with pytest.raises(ThawError, match="unknown setting.*epoch.*valid: epochs"):
        RunConfig.from_yaml(bad)
    bad.write_text("lr: fast\n")
    with pytest.raises(ThawError, match="lr = 'fast' must be a number or auto"):
        RunConfig.from_yaml(bad)


def test_unfreeze_groups():
    assert unfreeze_groups("all") is None
    assert unfreeze_groups("3") == 3
    with pytest.raises(ThawError):
        unfreeze_groups("0")


def test_every_setting_has_a_flag_with_its_default_in_the_help():
    from thaw.cli import parser
    from thaw.cli.flags import settings as _settings

    fit = parser()._subparsers._group_actions[0].choices["fit"]
    by_dest = {}
    for a in fit._actions:  # the setting's own flag comes first (--no-augment, an alias, after it)
        by_dest.setdefault(a.dest, a)
    for _, key, _field, default in _settings(RunConfig()):
        if key == "data.path":
            continue  # the positional DATA
        assert key in by_dest, f"no flag for {key}"
        shown = "none" if default is None else str(default)
        assert f"(default: {shown})" in by_dest[key].help, key


def test_flags_override_the_file_per_phase_and_patience_sets_both(tmp_path, capsys):
    from thaw.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(override(RunConfig(), {"lr": 3e-4, "phase1.epochs": 4}).to_yaml())
    args = [
        "fit",
        "x",
        "--config",
        str(path),
        "--patience",
        "7",
        "--phase2-patience",
        "2",
        "--phase2-warmup-epochs",
        "0.5",
        "--phase1-schedule",
        "cosine",
        "--crop-scale-min",
        "0.8",
        "--no-flip",
        "--workers",
        "1",
        "--split-seed",
        "3",
        "--image-size",
        "96",
        "--print-config",
    ]
    assert main(args) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    config = RunConfig.from_dict(printed)
    assert config.lr == 3e-4 and config.phase1.epochs == 4  # from the file
    assert (config.phase1.patience, config.phase2.patience) == (7, 2)
    assert config.phase2.warmup_epochs == 0.5 and config.phase1.schedule == "cosine"
    assert config.data.crop_scale_min == 0.8 and config.data.hflip is False and config.data.num_workers == 1
    assert config.data.split_seed == 3 and config.data.image_size == 96 and config.data.path == "x"
    assert main(["fit", "x", "--config", str(path), "--image-size", "none", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["image_size"] is None


def test_resume_takes_no_other_settings(tmp_path, capsys):
    from thaw.cli import main

    assert main(["fit", "--resume", str(tmp_path), "--lr", "0.1"]) == 2
    assert "drop the other settings (lr)" in capsys.readouterr().err
